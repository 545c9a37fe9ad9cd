"""transcript_window, utterance, call.conversation; AI attempts of a live call

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 18:00:00

A call is transcribed a window of each track at a time, while it goes on: its windows and their
utterances are written before the call's own row exists, and so are the AI attempts they took,
so ai_attempt no longer requires the row (a call's attempts are still read by its id).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "transcript_window",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("track", sa.SmallInteger(), nullable=False),
        sa.Column("start_sample", sa.BigInteger(), nullable=False),
        sa.Column("end_sample", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint(
            "call_id", "track", "start_sample", name=op.f("pk_transcript_window")
        ),
    )
    op.create_table(
        "utterance",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("track", sa.SmallInteger(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sentiment_label", sa.Text(), nullable=False),
        sa.Column("sentiment_score", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_utterance")),
    )
    op.create_index("ix_utterance_call", "utterance", ["call_id", "start_s"])
    op.add_column("call", sa.Column("conversation", postgresql.JSONB(), nullable=True))
    op.drop_constraint("fk_ai_attempt_call_id_call", "ai_attempt", type_="foreignkey")


def downgrade() -> None:
    op.execute(
        "DELETE FROM ai_attempt a"
        " WHERE NOT EXISTS (SELECT 1 FROM call c WHERE c.call_id = a.call_id)"
    )
    op.create_foreign_key(
        "fk_ai_attempt_call_id_call",
        "ai_attempt",
        "call",
        ["call_id"],
        ["call_id"],
        ondelete="CASCADE",
    )
    op.drop_column("call", "conversation")
    op.drop_index("ix_utterance_call", table_name="utterance")
    op.drop_table("utterance")
    op.drop_table("transcript_window")
