"""The erasure ledger (table `erasure`) and call.audio_erased_at

An erasure (DELETE /v1/calls/{id}, or retention) leaves a row without content: the call's id,
what was erased (the whole call, or its recording only), why, which API key asked (its id) and
when. After a restore, `callstream erase --replay-ledger` erases again what it lists.
AUDIO_RETENTION_DAYS erases a call's recording only; the call says when (audio_erased_at).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 11:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("call", sa.Column("audio_erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "erasure",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("requeues", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint("scope IN ('call', 'audio')", name="erasure_scope_known"),
        sa.CheckConstraint("reason IN ('request', 'retention')", name="erasure_reason_known"),
    )
    op.create_index("ux_erasure_call_scope", "erasure", ["call_id", "scope"], unique=True)
    op.create_index("ix_erasure_erased", "erasure", ["erased_at"])
    op.create_index(
        "ix_erasure_pending",
        "erasure",
        ["requested_at"],
        postgresql_where=sa.text("erased_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("erasure")
    op.drop_column("call", "audio_erased_at")
