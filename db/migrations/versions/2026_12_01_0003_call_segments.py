"""call_segment: a call's audio in segments per track, stored once; call.tracks; no packet rows

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 17:00:00

The packets of calls flushed before become one text segment per call (their data as sent, in
sequence order: the AI providers decode it as they always did), and the packet table goes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "call_segment",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("segment", sa.Integer(), nullable=False),
        sa.Column("track", sa.SmallInteger(), nullable=False),
        sa.Column("last_entry_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_entry_n", sa.BigInteger(), nullable=False),
        sa.Column("encoding", sa.Text(), nullable=False),
        sa.Column("packets", sa.Integer(), nullable=False),
        sa.Column("first_sequence", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("sequences", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("sizes", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("timestamps", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("arrivals", postgresql.ARRAY(sa.Float()), nullable=False),
        sa.Column("payload", postgresql.BYTEA(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("call_id", "segment", "track", name=op.f("pk_call_segment")),
    )
    # Audio does not compress: spare the try, and let a Range read fetch only its own chunks.
    op.execute("ALTER TABLE call_segment ALTER COLUMN payload SET STORAGE EXTERNAL")
    op.add_column("call", sa.Column("tracks", postgresql.JSONB(), nullable=True))
    op.execute(
        """
        INSERT INTO call_segment (call_id, segment, track, last_entry_ms, last_entry_n,
            encoding, packets, first_sequence, last_sequence, sequences, sizes, timestamps,
            arrivals, payload)
        SELECT call_id, 0, 0, 0, 0, 'text', count(*), min(sequence), max(sequence),
            array_agg(sequence ORDER BY sequence),
            array_agg(octet_length(convert_to(data, 'UTF8')) ORDER BY sequence),
            array_agg(timestamp ORDER BY sequence),
            array_agg(extract(epoch FROM received_at)::float8 ORDER BY sequence),
            convert_to(string_agg(data, '' ORDER BY sequence), 'UTF8')
        FROM packet GROUP BY call_id
        """
    )
    op.drop_table("packet")


def downgrade() -> None:
    op.create_table(
        "packet",
        sa.Column("call_id", sa.Text(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_id"], ["call.call_id"], name=op.f("fk_packet_call_id_call"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("call_id", "sequence", name=op.f("pk_packet")),
    )
    # Back to a row a packet (the inbound track's; the old schema had one): text as it was,
    # audio as base64 again.
    op.execute(
        """
        INSERT INTO packet (call_id, sequence, data, timestamp, received_at)
        SELECT s.call_id, p.seq,
            CASE WHEN s.encoding = 'text'
                 THEN convert_from(substring(s.payload FROM p.at + 1 FOR p.size), 'UTF8')
                 ELSE translate(encode(substring(s.payload FROM p.at + 1 FOR p.size), 'base64'),
                                E'\\n', '')
            END,
            p.ts, to_timestamp(p.arrival)
        FROM call_segment s JOIN call c ON c.call_id = s.call_id,
        LATERAL (
            SELECT u.seq, u.size, u.ts, u.arrival,
                   coalesce(sum(u.size) OVER (ORDER BY u.i ROWS BETWEEN UNBOUNDED PRECEDING
                                              AND 1 PRECEDING), 0) AS at
            FROM unnest(s.sequences, s.sizes, s.timestamps, s.arrivals)
                 WITH ORDINALITY AS u(seq, size, ts, arrival, i)
        ) p
        WHERE s.track = 0
        ON CONFLICT DO NOTHING
        """
    )
    op.drop_column("call", "tracks")
    op.drop_table("call_segment")
