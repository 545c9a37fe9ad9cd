"""call_segment.object_key: a segment's bytes in an object store (AUDIO_STORE_URL)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("call_segment", sa.Column("object_key", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("call_segment", "object_key")
