"""Reader for plain pickles (``pickle.dump`` rather than ``torch.save``), through the safe interpreter.

Tensors in a plain pickle carry their storages as nested ``torch.storage._load_from_bytes``
payloads, which go back through the same interpreter. Files of other tools (numpy-only objects,
old PyBrain networks) open as inert data and are then reported as holding no weights.
"""

from __future__ import annotations

from ckpt_migrate.errors import NotMyFormat
from ckpt_migrate.io.source import Source
from ckpt_migrate.unpickler.vm import Interpreter
from ckpt_migrate.unpickler.static import looks_like_pickle
from ckpt_migrate.converters.base import RawRead, ReadOptions, Reader
from ckpt_migrate.converters.readers.torch_legacy import looks_legacy, nested_loader


class PlainPickleReader(Reader):
    """A plain pickle stream of any protocol (0-5)."""

    name = "pickle"
    description = "plain pickle (pickle.dump), protocols 0-5, opened by the safe interpreter"

    def sniff(self, head: bytes, source: Source) -> None:
        if looks_legacy(head):
            raise NotMyFormat()
        if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
            return
        if looks_like_pickle(head):
            return
        raise NotMyFormat()

    def read(self, source: Source, options: ReadOptions) -> RawRead:
        data = source.map()
        refuse_joblib(data, source.name)
        interpreter = Interpreter(
            data,
            path=source.name,
            load_nested=nested_loader(source.name, options, depth=1),
            policy=options.policy(),
            limits=options.limits,
            budget=options.budget,
            where="pickle",
        )
        result = interpreter.run()
        trailing = len(data) - interpreter.pos
        return RawRead(result.value, "pickle", result.globals, {"trailing_bytes": trailing} if trailing else {})


JOBLIB_WRAPPERS = frozenset({"joblib.numpy_pickle.NumpyArrayWrapper", "joblib.numpy_pickle.NDArrayWrapper",
                             "sklearn.externals.joblib.numpy_pickle.NumpyArrayWrapper"})


def refuse_joblib(data: bytes, path: str) -> None:
    """Say clearly that a ``joblib.dump`` file is not a torch checkpoint (its arrays follow the pickle as raw bytes).

    Only when the wrapper classes are the sole refused names the pickle mentions; anything else
    goes on to the interpreter, which refuses gadgets as usual.

    Raises:
        UnsupportedFormatError: the pickle is a joblib dump.
    """
    from ckpt_migrate.errors import UnsupportedFormatError
    from ckpt_migrate.unpickler.policy import classify
    from ckpt_migrate.unpickler.static import walk

    names = [g.dotted for g in walk(data[: 1 << 20] if len(data) > 1 << 20 else data).globals]
    if not any(n in JOBLIB_WRAPPERS for n in names):
        return
    if any(classify(n)[0] == "refused" for n in names if n not in JOBLIB_WRAPPERS):
        return
    raise UnsupportedFormatError("a joblib pickle (joblib.dump: arrays stored after the pickle), not a torch checkpoint; "
                                 "it holds no torch model weights (open it with joblib.load only if you trust it)", path=path)
