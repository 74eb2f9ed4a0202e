"""Writes the .npy token fixtures read by tests/unit/io/test_token_file.cpp, with NumPy itself.

Run from anywhere: python make_fixture.py (needs numpy). The values are repeated in the test.
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# 2-D int64 [3, 4]: the widest accepted dtype, with the extremes of the uint32 range.
ids = np.array(
    [[0, 1, 2, 3], [65535, 65536, 128255, 4294967295], [7, 11, 13, 17]], dtype=np.int64
)
np.save(os.path.join(HERE, "ids.npy"), ids)

# 1-D uint16 stream (seq_len 0 when read).
np.save(os.path.join(HERE, "ids_u2.npy"), np.array([5, 0, 65535, 42, 31999], dtype=np.uint16))

# Format version 2.0 header (4-byte header length), int32 [2, 3].
with open(os.path.join(HERE, "ids_v2.npy"), "wb") as f:
    np.lib.format.write_array(
        f, np.array([[1, 2, 3], [100000, 200000, 300000]], dtype=np.int32), version=(2, 0)
    )
