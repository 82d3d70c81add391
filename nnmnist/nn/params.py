"""The flat parameter store: every parameter of a model in one value buffer and one gradient
buffer, with buffers for optimizer state laid out the same way.

A model builds its store when it is built; each parameter Tensor's `value` and gradient are
views into the store's buffers. So the dense optimizer update is one fused pass over all the
parameters (one call on `store.value`, `store.grad` and the aligned state buffers), a row
("lazy") update still works on each parameter's 2-D view, and loading weights is a plain
in-place copy.

Write a stored parameter in place (`p.value[...] = new`): assigning a new array to `p.value`
detaches that Tensor from the store.

The store can be laid out again at other sizes (`take`): meSimp's compaction removes rows of a
layer's W and b and the matching columns of the next W. Every buffer set made by `aligned`
(the optimizer's moments) is cut the same way, so the optimizer follows without being told.
"""
import weakref

import numpy as np

from ..errors import UserError


class StateDictError(UserError):
    """A state dict that does not fit the model or optimizer it is loaded into."""


def check_state_keys(what, given, expected):
    """Raise StateDictError if the names of a state dict differ from the expected ones."""
    given, expected = set(given), set(expected)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected)}")
        raise StateDictError(f"{what} state: {'; '.join(parts)}")


def load_into(what, pairs, xp):
    """For (name, target, source) triples: check every shape first, then copy each source into
    its target in place (converted to the target's dtype). A mismatch changes nothing."""
    pairs = list(pairs)
    for name, target, source in pairs:
        shape = tuple(np.shape(source))
        if shape != tuple(target.shape):
            raise StateDictError(f"{what} state: {name} has shape {shape}, expected "
                                 f"{tuple(target.shape)}")
    for _, target, source in pairs:
        target[...] = xp.asarray(source, dtype=target.dtype)


def to_host(a):
    """A NumPy copy of a NumPy or CuPy array."""
    get = getattr(a, "get", None)
    return get() if get is not None else np.array(a, copy=True)


class AlignedBuffers:
    """Flat buffers laid out like a store's values (one per name, e.g. Adam's m and v).

    `flat[name]` is the whole buffer; `views(name)` gives one view per parameter, in the
    store's order, shaped like that parameter.
    """

    def __init__(self, store, names):
        self.store, self.names = store, tuple(names)
        self.flat = {name: store.xp.zeros(store.size, dtype=store.dtype) for name in self.names}

    def views(self, name):
        return self.store.views_of(self.flat[name])

    def of(self, param):
        """{name: view} for one parameter (a Tensor of the store, or its name)."""
        i = self.store.index(param)
        return {name: self.store.views_of(buf)[i] for name, buf in self.flat.items()}

    def fill(self, value):
        for buf in self.flat.values():
            buf.fill(value)


class ParamStore:
    """One value buffer and one gradient buffer for a list of named parameter Tensors."""

    def __init__(self, named_params, xp=np):
        named_params = list(named_params)
        names = [name for name, _ in named_params]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique: {names}")
        self.xp = xp
        self.names = names
        self.params = [p for _, p in named_params]
        dtypes = {np.dtype(p.value.dtype) for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"a store holds one dtype; got {sorted(str(d) for d in dtypes)}")
        self.dtype = dtypes.pop()
        self._aligned = []  # weak references to AlignedBuffers that follow this layout
        self.layout = 0     # counts the layouts: whoever caches views compares it
        grads = [p._grad if p._grad is not None else None for p in self.params]
        self._lay_out([p.value for p in self.params], grads)

    # -- layout ----------------------------------------------------------------------------
    def _lay_out(self, values, grads):
        """New buffers holding `values` (and `grads`, zeros where None); re-point the Tensors."""
        self.shapes = [tuple(v.shape) for v in values]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)]).tolist()
        self.size = self.offsets[-1]
        self.layout += 1
        self.value = self.concat(values)
        self.grad = self.xp.zeros(self.size, dtype=self.dtype)
        for p, v, g in zip(self.params, self.views_of(self.value), self.views_of(self.grad)):
            p.value, p._grad, p.store = v, g, self
        for p, g in zip(self.params, grads):
            if g is not None:
                p._grad[...] = g

    def concat(self, arrays):
        """One flat buffer of this store's dtype holding `arrays` in the store's order."""
        flat = self.xp.empty(self.size, dtype=self.dtype)
        for view, a in zip(self.views_of(flat), arrays):
            view[...] = a
        return flat

    def views_of(self, flat):
        """Per-parameter views of a flat buffer laid out like this store."""
        return [flat[a:b].reshape(s) for a, b, s in zip(self.offsets, self.offsets[1:], self.shapes)]

    def index(self, param):
        if isinstance(param, str):
            return self.names.index(param)
        for i, p in enumerate(self.params):
            if p is param:
                return i
        raise KeyError(f"{getattr(param, 'name', param)!r} is not in this store")

    def cut(self, arrays, index):
        """Each array indexed by `index[name]` where given (a copy), else as it is."""
        return [a[index[name]] if name in index else a for name, a in zip(self.names, arrays)]

    def aligned(self, names):
        """Flat buffers laid out like the values, cut along with them by `take`."""
        buffers = AlignedBuffers(self, names)
        self._aligned.append(weakref.ref(buffers))
        return buffers

    def take(self, index):
        """Lay the store out again with each named parameter indexed by `index[name]`.

        `index` maps a parameter name to a NumPy-style index (rows kept: `keep`; columns kept:
        `(slice(None), keep)`; both: `np.ix_(rows, cols)`). Values, gradients and every
        aligned buffer set are cut the same way; the Tensors keep their identity and get views
        of the new buffers. Example (removing neurons of a hidden layer i):
            store.take({f"{i}.W": keep, f"{i}.b": keep, f"{i+1}.W": (slice(None), keep)})
        """
        unknown = sorted(set(index) - set(self.names))
        if unknown:
            raise KeyError(f"not in this store: {', '.join(unknown)}")
        values = self.cut([p.value for p in self.params], index)
        grads = self.cut([p._grad for p in self.params], index)
        followers = [ref() for ref in self._aligned]
        followers = [f for f in followers if f is not None]
        old = [{name: f.views(name) for name in f.names} for f in followers]
        self._lay_out(values, grads)
        for f, views in zip(followers, old):
            for name in f.names:
                f.flat[name] = self.concat(self.cut(views[name], index))
        self._aligned = [weakref.ref(f) for f in followers]

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """{name: host copy of the value} for every parameter."""
        return {name: to_host(p.value) for name, p in zip(self.names, self.params)}

    def load_state_dict(self, state, what="model"):
        """Copy every parameter's value in place; names and shapes must match exactly."""
        check_state_keys(what, state, self.names)
        load_into(what, self.loading(state), self.xp)

    def loading(self, state):
        """(name, target, source) for every parameter, for `load_into`."""
        return [(name, p.value, state[name]) for name, p in zip(self.names, self.params)]
