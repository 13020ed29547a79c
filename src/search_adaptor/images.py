"""Corpus items that are images: a file inside the dataset folder, or a URL.

A corpus row with ``"image"`` (:func:`search_adaptor.data.record`) is embedded as its image, not as
text: the item to embed is an :class:`ImageRef` instead of a ``str``. Everything that handles items
(:class:`~search_adaptor.store.EmbeddingStore`, the encoders) takes ``str | ImageRef``
(:data:`Item`); a ``str`` is a text, exactly as before.

An image is known by its content, never by its path: :attr:`ImageRef.content_id` is the sha256 of the
file's bytes (``sha256:<hex>``), so the store reuses a vector wherever the same picture lives and two
different pictures never share one. A URL is known by its string (``url:<sha256 of the URL>``): the
provider fetches it, so a URL whose picture changes keeps its old vector, as a text would.

Only the standard library is imported: loading a corpus stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from search_adaptor.files import inside

__all__ = ["ImageRef", "Item", "image_size", "image_type"]

#: The magic bytes of the formats the providers take, and their media types.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_URL_SCHEMES = ("http://", "https://")
_CHUNK = 1 << 20
#: JPEG start-of-frame markers (the ones that carry the picture's size).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _is_url(value: str) -> bool:
    """Whether ``value`` is an http(s) URL: its scheme in any case (RFC 3986 makes schemes
    case-insensitive, so ``HTTPS://host/a.png`` is a URL, not a relative file path)."""
    return value[:8].lower().startswith(_URL_SCHEMES)


def image_type(data: bytes) -> str | None:
    """The media type of an image's bytes (``"image/png"``...), from its magic bytes; None if unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of a PNG, GIF, WebP or JPEG image; None if unknown.

    Nothing is decoded: the size is where each format's specification puts it (PNG ``IHDR``, the
    GIF logical screen, WebP's ``VP8``/``VP8L``/``VP8X`` chunk, JPEG's start-of-frame segment).
    """
    kind = image_type(data)
    try:
        if kind == "image/png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if kind == "image/gif":
            return struct.unpack("<HH", data[6:10])
        if kind == "image/webp":
            return _webp_size(data)
        if kind == "image/jpeg":
            return _jpeg_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


class ImageUnreadable(ValueError):
    """An image file that cannot be read (missing, unreadable); ``item`` is its :class:`ImageRef`, so
    that a caller that knows its corpus row can name it."""

    def __init__(self, message: str, item: ImageRef) -> None:
        super().__init__(message)
        self.item = item


@dataclass(frozen=True)
class ImageRef:
    """One image to embed: an absolute file path (checked to be inside its dataset folder when the
    corpus was read, :meth:`of`) or an ``http(s)`` URL that the provider fetches.

    Attributes
    ----------
    source : str
        The absolute path of the file, or the URL.
    """

    source: str

    @classmethod
    def of(cls, value: object, folder: str | os.PathLike | None) -> ImageRef:
        """The image a corpus row names: an http(s) URL (its scheme in lower case, whatever case the row
        wrote it in), or a path relative to ``folder`` that must stay in it.

        The file is not read here (nor need it exist yet): a corpus whose vectors are given
        precomputed needs no image files. It is read when its content is first needed
        (:attr:`content_id`), and a missing file then fails in one line naming it.

        Raises
        ------
        ValueError
            One line, naming the value and the fix: not a string, a path outside ``folder`` (or
            absolute; one that a symbolic link leads out of it is told apart, naming the link and
            where it points), or a relative path without a folder to resolve it in.
        """
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                "must be a path relative to the dataset folder or an http(s) URL, "
                f"got {json.dumps(value)[:60]}"
            )
        if _is_url(value):  # the scheme in RFC 3986's canonical lower case: one URL, one store key
            scheme, rest = value.split(":", 1)
            return cls(f"{scheme.lower()}:{rest}")
        if folder is None:
            raise ValueError(
                f"{json.dumps(value)} is a path, but this corpus was given without its folder; "
                "read it from a BEIR folder (or give image URLs)"
            )
        try:
            path = inside(folder, value, "image")
        except ValueError:
            link = _link_out(folder, value)
            if link is not None:  # a relative path indeed, led out by a link: name it, and where it goes
                raise ValueError(
                    f"{json.dumps(value)} leads out of the dataset folder {Path(folder).resolve()}: "
                    f"{link[0]} is a symbolic link to {link[1]}, and images must be inside the dataset "
                    f"folder itself; move {link[1]} to {link[0]} in place of the link, or keep the whole "
                    "dataset folder where the images are"
                ) from None
            raise ValueError(
                f"{json.dumps(value)} is not a relative path inside the dataset folder "
                f"{Path(folder).resolve()}; keep the images in that folder and name them relative to it"
            ) from None
        return cls(str(path))

    @property
    def is_url(self) -> bool:
        """Whether the provider fetches the image itself (else its bytes are sent)."""
        return _is_url(self.source)

    def read(self) -> bytes:
        """The file's bytes.

        Raises
        ------
        ValueError
            A URL (it has no bytes here), or a file that cannot be read, in one line.
        """
        if self.is_url:
            raise ValueError(f"{self.source}: an image URL is fetched by the provider, not read here")
        try:
            return Path(self.source).read_bytes()
        except OSError as exc:
            raise self._unreadable(exc) from None

    @cached_property
    def content_id(self) -> str:
        """What the image is, independent of where it lives: ``sha256:<hex of the bytes>`` of a file,
        ``url:<hex of the sha256 of the URL>`` of a URL. The store keys images by it."""
        if self.is_url:
            return "url:" + hashlib.sha256(self.source.encode()).hexdigest()
        digest = hashlib.sha256()
        try:
            with open(self.source, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise self._unreadable(exc) from None
        return "sha256:" + digest.hexdigest()

    def _unreadable(self, exc: OSError) -> ImageUnreadable:
        return ImageUnreadable(
            f'{self.source}: cannot read the image ({exc.strerror}); fix the "image" field of its corpus row',
            self,
        )

    def size_bytes(self) -> int:
        """Size of the file in bytes (0 for a URL: nothing is uploaded)."""
        return 0 if self.is_url else os.path.getsize(self.source)

    def __str__(self) -> str:
        """How messages name it: a URL without its query, fragment or user part (a presigned URL's
        signature is a credential, as an API key is), a file by its path."""
        if not self.is_url:
            return self.source
        parts = urlsplit(self.source)
        hidden = "?..." if parts.query or parts.fragment else ""
        return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", "")) + hidden


def _link_out(folder: str | os.PathLike, relative: str) -> tuple[Path, Path] | None:
    """The first symbolic link along ``relative`` (a path in ``folder``) that points out of ``folder``,
    and the place it points to; None where the path leaves ``folder`` without one (``..``, absolute).

    Such a path is relative and inside ``folder`` as written: only the link takes it out, so the
    refusal must name the link (images kept on another disk through a linked folder), not the path.
    """
    base = Path(folder).resolve()
    step = base
    for part in Path(relative).parts:
        if part == ".." or Path(part).is_absolute():  # left as written: no link to blame
            return None
        step = step / part
        if step.is_symlink() and not step.resolve().is_relative_to(base):
            return step, step.resolve()
    return None


#: One item to embed: a text, or an image (a corpus row with ``"image"``).
Item = str | ImageRef


def check_item_types(items: Iterable[object]) -> None:
    """Refuse, in one line, the first item that is neither a text nor an :class:`ImageRef` (a None, a
    number, a document object): it would otherwise be taken for an image, or fail deep inside; and a
    text that is not valid Unicode (a lone surrogate: bytes that were not UTF-8, kept by Python's
    command-line decoding, or a ``\\ud800`` escape in JSON), which no tokenizer or store takes."""
    for i, item in enumerate(items):
        if not isinstance(item, (str, ImageRef)):
            raise TypeError(
                f"item {i} is {type(item).__name__} {item!r:.60}, not a text: pass texts as str "
                "(images as search_adaptor.images.ImageRef)"
            )
        at = lone_surrogate(item) if isinstance(item, str) else None
        if at is not None:
            raise ValueError(
                f"text {i} is not valid Unicode: character {at} is a lone surrogate "
                f"({item[at]!r}: bytes that were not UTF-8?); pass UTF-8 text"
            )


def lone_surrogate(text: str) -> int | None:
    """The position of the first lone surrogate in ``text`` (no valid Unicode text has one, and no
    encoder or store takes it), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
