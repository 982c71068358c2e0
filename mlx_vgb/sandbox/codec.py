"""Plain-data codec for the channel between the program's and the tests' interpreters.

Child side: runs inside both sandboxed interpreters (shipped as a code object by the host, see
`host.py`), so it imports nothing. What crosses: None, bool, int, float, complex, str, bytes,
bytearray, list, tuple, set, frozenset, dict, and references (small integers) to objects that
stay in the program's process. `decode` builds exactly those built-in types (or calls
`make_ref` for a reference) and never evaluates anything, so whatever bytes the program sends,
the tests' process holds plain data whose `==` is the built-in one.

Format: a tag byte, then for numbers a hex text ended by ";", for strings and bytes a decimal
length, ":" and the bytes, for containers a decimal count, ":" and the items.
"""

MAX_DEPTH = 100  # nesting deeper than this is refused on both sides


class ChannelError(Exception):
    """A message that is not well formed, too deep, or holds something that cannot cross."""


def encode(value, to_ref) -> bytes:
    """`to_ref(obj)` gives the reference of a non-plain object, or None (then it cannot cross)."""
    out = []
    _encode(value, to_ref, out, 0)
    return b"".join(out)


def _encode(v, to_ref, out: list, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ChannelError(f"a value nested deeper than {MAX_DEPTH} levels cannot be sent")
    t = type(v)
    if v is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if v else b"F")
    elif isinstance(v, int) and t is not bool:
        out.append(b"i%x;" % int(v))
    elif isinstance(v, float):
        out.append(b"f" + float.hex(float(v)).encode() + b";")
    elif isinstance(v, complex):
        c = complex(v)
        out.append(b"c" + c.real.hex().encode() + b";" + c.imag.hex().encode() + b";")
    elif isinstance(v, str):
        data = str.encode(v, "utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data) + data)
    elif isinstance(v, (bytes, bytearray)):
        data = bytes(v)
        out.append((b"y%d:" if isinstance(v, bytearray) else b"b%d:") % len(data) + data)
    elif isinstance(v, (list, tuple, set, frozenset)):
        tag = b"l" if isinstance(v, list) else b"t" if isinstance(v, tuple) else b"S"
        if isinstance(v, frozenset):
            tag = b"z"
        items = list(v)
        out.append(tag + b"%d:" % len(items))
        for item in items:
            _encode(item, to_ref, out, depth + 1)
    elif isinstance(v, dict):
        items = list(v.items())
        out.append(b"d%d:" % len(items))
        for key, item in items:
            _encode(key, to_ref, out, depth + 1)
            _encode(item, to_ref, out, depth + 1)
    elif getattr(t, "__module__", None) == "numpy" and hasattr(v, "item") and v.ndim == 0:
        _encode(v.item(), to_ref, out, depth)  # a numpy scalar: its Python value
    else:
        ref = to_ref(v)
        if ref is None:
            raise ChannelError(f"a {t.__name__} object cannot be sent to the other process")
        out.append(b"r%x;" % ref)


def decode(data: bytes, make_ref):
    """The value in `data`; `make_ref(n)` stands for reference n. Raises ChannelError."""
    if type(data) is not bytes:
        raise ChannelError("a message must be bytes")
    try:
        value, pos = _decode(data, 0, make_ref, 0)
    except ChannelError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError, RecursionError, MemoryError) as e:
        raise ChannelError(f"malformed message: {type(e).__name__}: {e}") from None
    if pos != len(data):
        raise ChannelError("malformed message: trailing bytes")
    return value


def _until(data: bytes, pos: int, stop: bytes) -> tuple:
    end = data.index(stop, pos)
    if end - pos > 1 << 20:
        raise ChannelError("malformed message: number too long")
    return data[pos:end].decode("ascii"), end + 1


def _decode(data: bytes, pos: int, make_ref, depth: int) -> tuple:
    if depth > MAX_DEPTH:
        raise ChannelError(f"a value nested deeper than {MAX_DEPTH} levels")
    tag, pos = data[pos : pos + 1], pos + 1
    if tag == b"N":
        return None, pos
    if tag == b"T":
        return True, pos
    if tag == b"F":
        return False, pos
    if tag == b"i":
        text, pos = _until(data, pos, b";")
        return int(text, 16), pos
    if tag == b"f":
        text, pos = _until(data, pos, b";")
        return float.fromhex(text), pos
    if tag == b"c":
        re, pos = _until(data, pos, b";")
        im, pos = _until(data, pos, b";")
        return complex(float.fromhex(re), float.fromhex(im)), pos
    if tag == b"r":
        text, pos = _until(data, pos, b";")
        return make_ref(int(text, 16)), pos
    if tag not in (b"s", b"b", b"y", b"l", b"t", b"S", b"z", b"d"):
        raise ChannelError(f"malformed message: unknown tag {tag!r}")
    text, pos = _until(data, pos, b":")
    if not text.isdigit():
        raise ChannelError("malformed message: bad length")
    n = int(text)
    if tag in (b"s", b"b", b"y"):
        if pos + n > len(data):
            raise ChannelError("malformed message: truncated")
        chunk, pos = data[pos : pos + n], pos + n
        if tag == b"s":
            return chunk.decode("utf-8", "surrogatepass"), pos
        return (chunk if tag == b"b" else bytearray(chunk)), pos
    if n > len(data) - pos:  # every item takes at least one byte
        raise ChannelError("malformed message: truncated")
    items = []
    for _ in range(n * 2 if tag == b"d" else n):
        item, pos = _decode(data, pos, make_ref, depth + 1)
        items.append(item)
    if tag == b"l":
        return items, pos
    if tag == b"t":
        return tuple(items), pos
    if tag == b"S":
        return set(items), pos
    if tag == b"z":
        return frozenset(items), pos
    return dict(zip(items[::2], items[1::2])), pos
