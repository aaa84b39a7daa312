"""The demo retailer: a seeded synthetic world (`world`) and the command that loads it (`runner`)."""
