"""Commerce continuity: catalog, inventory, carts, checkout, orders, returns, loyalty."""
