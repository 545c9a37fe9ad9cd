"""webhook_delivery (the webhooks' outbox); utterance.search, a full-text index of what was said

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:50:00

A webhook is a row per (event, endpoint), written in the statement that makes the state it
announces (db/worker_writes.py), then delivered by the workers (jobs/webhooks.py): an endpoint's
rows never wait for another's. `body` is the JSON sent, fixed at the first attempt so that every
retry signs and sends the same bytes.

utterance.search is a generated tsvector (the `english` configuration, as the search queries it:
db/search.py), with a GIN index.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column(
            "occurred_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("state", sa.Text(), server_default="pending", nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        # Set by an admin's retry: the attempt after which the row fails, whatever the schedule.
        sa.Column("final_attempt", sa.Integer(), nullable=True),
        sa.Column(
            "next_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "attempt_log",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
        sa.UniqueConstraint("event_id", "endpoint", name=op.f("uq_webhook_delivery_event_id")),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_webhook_delivery_state_known"),
        ),
    )
    # The workers' poll: due rows only.
    op.create_index(
        "ix_webhook_delivery_due",
        "webhook_delivery",
        ["next_at"],
        postgresql_where=sa.text("state = 'pending'"),
    )
    # The dead letters' (and any state's) list, newest first.
    op.create_index("ix_webhook_delivery_state", "webhook_delivery", ["state", sa.text("id DESC")])
    op.add_column(
        "utterance",
        sa.Column(
            "search",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('english'::regconfig, text)", persisted=True),
            nullable=False,
        ),
    )
    op.create_index("ix_utterance_search", "utterance", ["search"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_utterance_search", table_name="utterance")
    op.drop_column("utterance", "search")
    op.drop_index("ix_webhook_delivery_state", table_name="webhook_delivery")
    op.drop_index("ix_webhook_delivery_due", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
