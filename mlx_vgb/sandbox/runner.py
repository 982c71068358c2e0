"""Child side, last stage: run the untrusted code in the sandboxed interpreter, in one of three
roles (`cfg["role"]`), after `bootstrap.py` has isolated and limited the process.

- "script" (`run_python`): run the code as `python main.py` would.
- "program" (`run_tests`, the program under test): run the program, then serve the tests'
  requests (call this function, read that attribute) over a pipe, answering in plain data
  (`codec.py`). Nothing here is trusted: the program can rewrite any of it.
- "tests" (`run_tests`, the checker): a separate interpreter that never runs the program's
  code. The program's top-level names are proxies (`Remote`) whose calls go over the pipe;
  results come back as built-in values, so the asserts, `==` and the verdict (a per-run nonce
  on a pipe only this process holds) stay out of the program's reach.
"""

import os
import sys

try:  # on the host an ordinary module; in the sandbox all child files share one namespace
    from .codec import ChannelError, decode, encode
except ImportError:
    pass

MAIN_FILENAME = "main.py"
TESTS_FILENAME = "tests.py"
MAX_MESSAGE_BYTES = 16 << 20
_MAX_MANIFEST_VALUE = 1 << 20  # larger top-level values are sent by reference
_SHOWN_ERRORS = 3  # tracebacks the program's process prints for exceptions sent to the tests
# Requests the tests may make about an object of the program (a Remote).
_OPS = (
    "call",
    "getattr",
    "setattr",
    "getitem",
    "setitem",
    "len",
    "contains",
    "list",
    "str",
    "repr",
    "bool",
)


def finish(status: int) -> None:
    """Leave as the interpreter does after a script (threads, atexit, flush), minus the
    module teardown, which costs ~10 ms and changes nothing for the verdict."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            status = status or 120  # what CPython exits with when it cannot flush stdout
    os._exit(status & 0xFF)


def _print_exception(e: BaseException, sources: dict) -> None:
    """Print like the interpreter would, without the sandbox's own frames."""
    try:
        import linecache  # imported only here: it costs ~20 ms
        import traceback

        for name, code in sources.items():
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        own = {_print_exception.__code__.co_filename, encode.__code__.co_filename}
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename not in own]
        text = "".join(traceback.format_exception_only(type(e), e))
        if frames:
            text = (
                "Traceback (most recent call last):\n"
                + "".join(traceback.format_list(frames))
                + text
            )
        sys.stderr.write(text)
    except BaseException:
        os.write(2, f"{type(e).__name__}: (traceback unavailable)\n".encode())


def _execute(code: str, filename: str, namespace: dict) -> int | None:
    """Run `code`; None if it ran to its end, else the exit status `python FILE` would have."""
    try:
        exec(compile(code, filename, "exec"), namespace)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        try:
            print(e.code, file=sys.stderr)
        except BaseException:
            pass
        return 1
    except BaseException as e:
        if isinstance(e, MemoryError):
            namespace.clear()  # free the program's data so that reporting has memory
        _print_exception(e, {filename: code})
        return 1
    return None


def _main_namespace(filename: str) -> dict:
    import builtins

    builtins.exit = builtins.quit = sys.exit  # normally added by `site`
    return {"__name__": "__main__", "__file__": filename, "__builtins__": builtins}


def run_role(cfg: dict, status_fd: int) -> None:
    """Entry from bootstrap.py: run the role's code, then exit. Does not return."""
    role = cfg["role"]
    filename = TESTS_FILENAME if role == "tests" else MAIN_FILENAME
    sys.argv = [filename]
    sys.path.insert(0, os.getcwd())
    sys.path.extend(cfg["site_dirs"])
    if role == "tests":
        _run_checks(cfg["code"], cfg["nonce"], cfg["channel"], status_fd)
    os.close(status_fd)  # the host judges the program by its exit status alone
    code, channel = cfg["code"], cfg.get("channel")
    del cfg
    namespace = _main_namespace(filename)
    status = _execute(code, filename, namespace)
    if role == "program" and status is None:
        status = _Server(channel, namespace, code).serve()
    finish(status or 0)


# ---- framing: an 8-byte big-endian length, then a codec message --------------------------


def _send(w, payload: bytes) -> None:
    w.write(len(payload).to_bytes(8, "big") + payload)
    w.flush()


def _recv(r) -> bytes | None:
    """The next message, or None when the other side has gone (EOF)."""
    head = r.read(8)
    if len(head) < 8:
        return None
    n = int.from_bytes(head, "big")
    if n > MAX_MESSAGE_BYTES:
        raise ChannelError(f"a message of {n} bytes is over the {MAX_MESSAGE_BYTES} limit")
    body = r.read(n)
    return body if len(body) == n else None


# ---- the program's side: serve requests --------------------------------------------------


class _Server:
    """Answers the tests' requests about the program's objects (in the program's process)."""

    def __init__(self, channel: tuple, namespace: dict, code: str):
        self.channel, self.namespace, self.code = channel, namespace, code
        self.objects: dict = {}  # reference -> object (kept alive for the run)
        self.refs: dict = {}  # id(object) -> reference
        self.errors = 0

    def ref(self, obj) -> int:
        n = self.refs.get(id(obj))
        if n is None:
            n = self.refs[id(obj)] = len(self.objects)
            self.objects[n] = obj
        return n

    def manifest(self) -> list:
        """The program's top-level names: modules by name, plain data, the rest by reference."""
        entries = []
        for name, value in list(self.namespace.items()):
            if type(name) is not str or name.startswith("__"):
                continue
            if isinstance(value, type(sys)):
                entries.append((name, "module", str(getattr(value, "__name__", ""))))
                continue
            try:  # plain data goes by value unless large; anything else by reference
                by_value = len(encode(value, self.ref)) <= _MAX_MANIFEST_VALUE
            except (ChannelError, RecursionError, ValueError, TypeError, OverflowError):
                by_value = False
            entries.append((name, "value", value) if by_value else (name, "ref", self.ref(value)))
        return entries

    def serve(self) -> int:
        """Send the manifest, then answer until the tests close the channel; the exit status."""
        try:
            self.r, self.w = open(self.channel[0], "rb"), open(self.channel[1], "wb")
        except OSError:  # the program closed its end of the channel
            return 1
        try:
            _send(self.w, encode(self.manifest(), self.ref))
            while True:
                msg = _recv(self.r)
                if msg is None:
                    return 0
                _send(self.w, self.answer(msg))
        except SystemExit as e:  # the program exits during a call: the tests see it go
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except OSError:  # the tests' side is gone
            return 0

    def answer(self, msg: bytes) -> bytes:
        try:
            request = decode(msg, self.objects.__getitem__)
            op, obj, args = request[0], request[1], request[2:]
            if op not in _OPS:
                raise ChannelError(f"unknown request {op!r}")
            result = self.perform(op, obj, args)
        except SystemExit:
            raise
        except BaseException as e:
            # The tests may expect the exception; show the first few, so that tests probing
            # errors in a loop do not fill the output cap.
            self.errors += 1
            if self.errors <= _SHOWN_ERRORS:
                _print_exception(e, {MAIN_FILENAME: self.code})
            elif self.errors == _SHOWN_ERRORS + 1:
                sys.stderr.write("(later exceptions of the program not shown)\n")
            return self.error(e)
        try:
            return encode(("ok", result), self.ref)
        except BaseException as e:
            return self.error(e)

    @staticmethod
    def perform(op: str, obj, args: tuple):
        if op == "call":
            return obj(*args[0], **args[1])
        if op == "getattr":
            return getattr(obj, args[0])
        if op == "setattr":
            return setattr(obj, args[0], args[1])
        if op == "getitem":
            return obj[args[0]]
        if op == "setitem":
            obj[args[0]] = args[1]
            return None
        if op == "len":
            return len(obj)
        if op == "contains":
            return args[0] in obj
        return {"list": list, "str": str, "repr": repr, "bool": bool}[op](obj)

    @staticmethod
    def error(e: BaseException) -> bytes:
        try:
            message = str(e)
        except BaseException:
            message = "(unprintable)"
        return encode(("raise", str(type(e).__name__), message), lambda _: None)


# ---- the tests' side: proxies for the program's objects ----------------------------------


class ProgramExited(BaseException):
    """The program's process ended (or closed the channel) before the tests finished."""


class ProgramError(Exception):
    """The program raised an exception that is not a built-in one, or sent a bad answer."""


class Remote:
    """A function, class or other object of the program: each use is a request to it.

    `==` and `hash` are identity: comparing two of the program's objects would run its code.
    """

    __slots__ = ("_channel", "_ref")

    def __init__(self, channel: "_Channel", ref: int):
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_ref", ref)

    def _ask(self, op: str, *args):
        return self._channel.ask((op, self) + args)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value) -> None:
        self._ask("setattr", name, value)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value) -> None:
        self._ask("setitem", key, value)

    def __len__(self) -> int:
        return self._typed(self._ask("len"), int, "len()")

    def __contains__(self, item) -> bool:
        return bool(self._typed(self._ask("contains", item), bool, "in"))

    def __iter__(self):
        return iter(self._typed(self._ask("list"), list, "iteration"))

    def __bool__(self) -> bool:
        return self._typed(self._ask("bool"), bool, "bool()")

    def __str__(self) -> str:
        return self._typed(self._ask("str"), str, "str()")

    def __repr__(self) -> str:
        try:
            return self._typed(self._ask("repr"), str, "repr()")
        except Exception:
            return f"<program object #{self._ref}>"

    @staticmethod
    def _typed(value, kind: type, what: str):
        if type(value) is not kind:
            raise ProgramError(f"{what} of a program object gave a {type(value).__name__}")
        return value


class _Channel:
    """The tests' end of the pipes to the program's process."""

    def __init__(self, channel: tuple, status_fd: int):
        self.r, self.w = open(channel[0], "rb"), open(channel[1], "wb")
        self.status_fd = status_fd
        self.remotes: dict = {}
        self.gone = False

    def remote(self, n) -> Remote:
        if type(n) is not int:
            raise ChannelError("a reference must be an int")
        if n not in self.remotes:
            self.remotes[n] = Remote(self, n)
        return self.remotes[n]

    def ref_of(self, value):
        if type(value) is Remote and value._channel is self:
            return value._ref
        return None

    def lost(self) -> None:
        if not self.gone:
            self.gone = True
            os.write(self.status_fd, b"program-gone\n")
        raise ProgramExited("the program's process ended before the tests finished")

    def receive(self):
        try:
            data = _recv(self.r)
        except OSError:
            data = None
        except ChannelError as e:
            raise ProgramError(str(e)) from None
        if data is None:
            self.lost()
        try:
            return decode(data, self.remote)
        except ChannelError as e:
            raise ProgramError(f"the program sent a bad answer: {e}") from None

    def ask(self, request: tuple):
        if self.gone:
            self.lost()
        try:
            payload = encode(request, self.ref_of)
        except (ChannelError, RecursionError) as e:
            raise TypeError(f"cannot pass this to the program: {e}") from None
        try:
            _send(self.w, payload)
        except OSError:
            self.lost()
        reply = self.receive()
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "raise":
            raise _exception(reply[1], reply[2])
        raise ProgramError(f"the program sent a bad answer of type {type(reply).__name__}")


def _exception(name, message) -> BaseException:
    """The program's exception as the tests see it: the built-in class of that name (so that
    `except ValueError` works), else ProgramError. Never a BaseException-only class."""
    import builtins

    message = message if type(message) is str else ""
    cls = getattr(builtins, name, None) if type(name) is str else None
    if (
        isinstance(cls, type)
        and issubclass(cls, Exception)
        and not issubclass(cls, (StopIteration, StopAsyncIteration))
    ):
        try:
            return cls(message)
        except Exception:
            pass
    return ProgramError(f"{name}: {message}")


def _bind(namespace: dict, manifest, channel: _Channel, tests: str) -> None:
    """Put the program's top-level names the tests mention into their namespace. Built-in
    names are never shadowed, and a stdlib module's name (`math`, even if the program bound
    it to something else) is the tests' own import of that module."""
    import builtins

    if type(manifest) is not list:
        raise ProgramError("the program sent a bad list of names")
    for entry in manifest:
        if type(entry) is not tuple or len(entry) != 3:
            continue
        name, kind, value = entry
        if (
            type(name) is not str
            or not name.isidentifier()
            or name.startswith("__")
            or hasattr(builtins, name)
            or name not in tests
        ):
            continue
        if kind == "module" and type(value) is str and value != name:
            module = value  # `import numpy.linalg as la`: only stdlib modules are imported
        elif name in sys.stdlib_module_names:
            module = name
        else:
            module = None
        if module is not None:
            if module.partition(".")[0] in sys.stdlib_module_names:
                try:
                    __import__(module)
                    namespace[name] = sys.modules[module]
                except Exception:
                    pass
        elif kind == "value":
            namespace[name] = value
        elif kind == "ref" and type(value) is int:
            namespace[name] = channel.remote(value)


def _run_checks(tests: str, nonce: str, channel: tuple, status_fd: int) -> None:
    """The tests' interpreter: bind the program's names, run the tests, report; exits."""
    ch = _Channel(channel, status_fd)
    namespace = _main_namespace(TESTS_FILENAME)
    try:
        _bind(namespace, ch.receive(), ch, tests)
    except (ProgramExited, ProgramError) as e:
        sys.stderr.write(f"mlx_vgb.sandbox: {e}\n")
        finish(1)
    status = _execute(tests, TESTS_FILENAME, namespace)
    if status is None and not ch.gone:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os.write(status_fd, b"done " + nonce.encode() + b"\n")
        status = 0
    finish(1 if status is None else status)
