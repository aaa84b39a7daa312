"""console: indexes for prefix search and the 360 page

Revision ID: 0012
Revises: 0008
Create Date: 2026-11-26 16:00:00.000000

* profile_search_terms (profile_id, term): a multi-word name search probes each candidate's
  other name tokens (and the profile handler deletes a member's terms by profile_id).
* service_conversations (previous_conversation_id): a conversation's follow-ups.
* identity_links (profile_id, id_type) replaces (profile_id): "the anonymous ids of these members"
  (carts on the 360 page) has an equality on id_type too, and with two or more members SQLite
  preferred the unique (id_type, value) index for it, i.e. scanned every anonymous id.
* PostgreSQL only: varchar_pattern_ops indexes on identity_links (id_type, value) and
  profile_search_terms (term), which serve the byte-wise prefix ranges of
  `store.dialect.prefix_match` in any database locale. SQLite's own indexes already compare
  byte-wise (BINARY), so it needs no second copy.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0009"
branch_labels = None
depends_on = None


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_index("ix_identity_links_profile_type", "identity_links", ["profile_id", "id_type"])
    op.drop_index("ix_identity_links_profile_id", table_name="identity_links")
    op.create_index("ix_profile_search_terms_profile_term", "profile_search_terms", ["profile_id", "term"])
    op.create_index("ix_service_conversations_previous", "service_conversations", ["previous_conversation_id"])
    if _postgresql():
        op.create_index(
            "ix_identity_links_value_prefix",
            "identity_links",
            ["id_type", "value"],
            postgresql_ops={"value": "varchar_pattern_ops"},
        )
        op.create_index(
            "ix_profile_search_terms_term_prefix",
            "profile_search_terms",
            ["term"],
            postgresql_ops={"term": "varchar_pattern_ops"},
        )


def downgrade() -> None:
    if _postgresql():
        op.drop_index("ix_profile_search_terms_term_prefix", table_name="profile_search_terms")
        op.drop_index("ix_identity_links_value_prefix", table_name="identity_links")
    op.drop_index("ix_service_conversations_previous", table_name="service_conversations")
    op.drop_index("ix_profile_search_terms_profile_term", table_name="profile_search_terms")
    op.create_index("ix_identity_links_profile_id", "identity_links", ["profile_id"])
    op.drop_index("ix_identity_links_profile_type", table_name="identity_links")
