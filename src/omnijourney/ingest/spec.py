"""Event vocabulary: Segment E-commerce Spec v2 names and omnijourney's service events.

Recognised events get their properties validated with a typed model (see schemas.py);
any other event name is accepted as a custom event with free-form properties.
"""

from __future__ import annotations

#: Segment E-commerce Spec v2 (https://segment.com/docs/connections/spec/ecommerce/v2/)
ECOMMERCE_EVENTS: frozenset[str] = frozenset(
    {
        "Products Searched",
        "Product List Viewed",
        "Product List Filtered",
        "Promotion Viewed",
        "Promotion Clicked",
        "Product Clicked",
        "Product Viewed",
        "Product Added",
        "Product Removed",
        "Cart Viewed",
        "Checkout Started",
        "Checkout Step Viewed",
        "Checkout Step Completed",
        "Payment Info Entered",
        "Order Updated",
        "Order Completed",
        "Order Refunded",
        "Order Cancelled",
        "Coupon Entered",
        "Coupon Applied",
        "Coupon Denied",
        "Coupon Removed",
        "Product Added to Wishlist",
        "Product Removed from Wishlist",
        "Wishlist Product Added to Cart",
        "Product Shared",
        "Cart Shared",
        "Product Reviewed",
    }
)

#: events that must name the order they are about
ORDER_EVENTS: frozenset[str] = frozenset({"Order Updated", "Order Completed", "Order Refunded", "Order Cancelled"})

#: omnijourney's service vocabulary, in the spirit of the Segment spec (docs/EVENTS.md)
SERVICE_EVENTS: frozenset[str] = frozenset(
    {
        "Conversation Started",
        "Message Sent",
        "Conversation Assigned",
        "Conversation Resolved",
        "Call Completed",
        "Survey Responded",
    }
)

#: fulfilment and store events (click & collect, returns anywhere, loyalty)
FULFILMENT_EVENTS: frozenset[str] = frozenset(
    {
        "Order Ready for Pickup",
        "Order Picked Up",
        "Order Shipped",
        "Order Delivered",
        "Return Requested",
        "Return Received",
        "Store Visited",
        "Loyalty Points Earned",
        "Loyalty Points Redeemed",
        "Consent Updated",
    }
)

MESSAGE_TYPES: frozenset[str] = frozenset({"identify", "track", "page", "screen", "group", "alias"})

#: the browser SDK's short paths
SHORT_PATHS: dict[str, str] = {
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}

#: channels a source can have, and that `context.channel` may override to
CHANNELS: frozenset[str] = frozenset(
    {
        "web",
        "app",
        "email",
        "sms",
        "push",
        "chat",
        "call_center",
        "store",
        "social",
        "ads",
        "kiosk",
        "marketplace",
        "erp",
        "other",
    }
)
