"""Names for files that are not checkpoints, so the final error says what the file is."""

from __future__ import annotations

_SIGNATURES: list[tuple[bytes, str]] = [
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras/h5py weights?), not a PyTorch checkpoint"),
    (b"version https://git-lfs", "a Git LFS pointer, not the checkpoint itself; run `git lfs pull` to fetch the real file"),
    (b"\x93NUMPY", "a numpy .npy array file, not a PyTorch checkpoint"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
    (b"BZh", "a bzip2-compressed file; decompress it first"),
    (b"\xfd7zXZ", "an xz-compressed file; decompress it first"),
    (b"%PDF", "a PDF document"),
]


def describe(head: bytes) -> str:
    """A short phrase saying what ``head`` looks like when no reader claims it."""
    if not head:
        return "an empty file"
    for magic, text in _SIGNATURES:
        if head.startswith(magic):
            return text
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive without a torch data.pkl"
    sample = head[:512]
    try:
        sample.decode("utf-8")
        return "a text file, not a checkpoint"
    except UnicodeDecodeError:
        return "unrecognised binary data"
