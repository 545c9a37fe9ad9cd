"""Gap arithmetic, without Redis."""

from db.sequences import bits_set, missing_between


def test_missing_between_lists_the_holes_in_order():
    assert missing_between([1, 2, 5, 9], 1, 9, cap=100) == [3, 4, 6, 7, 8]


def test_missing_between_is_capped():
    assert missing_between([0, 1_000_000], 0, 1_000_000, cap=3) == [1, 2, 3]


def test_missing_between_counts_trailing_holes_and_ignores_duplicates():
    assert missing_between([3, 3, 4], 3, 7, cap=10) == [5, 6, 7]


def test_bits_set_reads_redis_bit_order():
    bitmap = bytes([0b1010_0000, 0b0000_0001])  # bits 0, 2 and 15 set (MSB first)

    assert bits_set(bitmap, 0, 15) == [0, 2, 15]
    assert bits_set(bitmap, 1, 14) == [2]
    assert bits_set(bitmap, 0, 100) == [0, 2, 15]
