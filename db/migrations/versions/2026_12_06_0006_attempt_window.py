"""ai_attempt.window_label and ai_attempt.live: the unit of work an AI attempt belongs to

A retry budget belongs to a unit of work (a transcription window, the sentiment step), never to
the call as a whole: the final run counts a window's failed attempts by its label, and a live
window's attempts (kept with live = true) spend no budget of the final run. `window` is an SQL
keyword, hence `window_label`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ai_attempt", sa.Column("window_label", sa.Text(), nullable=True))
    op.add_column(
        "ai_attempt",
        sa.Column("live", sa.Boolean(), nullable=False, server_default=sa.text("false")),
    )


def downgrade() -> None:
    op.drop_column("ai_attempt", "live")
    op.drop_column("ai_attempt", "window_label")
