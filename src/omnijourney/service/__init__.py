"""Service continuity: conversations from chat, e-mail, phone, social and store, with measures."""
