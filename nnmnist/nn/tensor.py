"""The engine: a Tensor (value, gradient) and the Flow tape that replays backward."""


class Tensor:
    """A value with its gradient buffer; parameters also carry views of optimizer state."""

    def __init__(self, value, requires_grad=True, name=""):
        self.value = value
        self.name = name
        self.requires_grad = requires_grad
        self._grad = None
        self._zero_grad = None   # the gradient buffer while it is known to hold only zeros
        self.state = {}          # views of the optimizer's state (m, v, h, ...), keyed by name
        self.store = None        # the ParamStore whose buffers `value` and the gradient view

    @property
    def shape(self):
        return self.value.shape

    @property
    def grad(self):
        """The gradient buffer, allocated as zeros on first use and reused afterwards."""
        if self._grad is None:
            self._grad = self.value * 0
        self._zero_grad = None  # whoever holds the buffer may write into it
        return self._grad

    @grad.setter
    def grad(self, g):
        self._grad = g

    def zeroed(self):
        """Note that the gradient buffer holds only zeros (an optimizer step just zeroed it)."""
        self._zero_grad = self._grad

    def zero_grad_to_overwrite(self):
        """The gradient buffer if it is known to hold only zeros, else None; a caller given
        the buffer writes its gradient into it instead of adding (the same numbers, without
        a temporary and a pass to add it). Any use of `grad` ends the knowledge."""
        g, self._zero_grad = self._zero_grad, None
        return g if g is not None and g is self._grad else None


class Flow:
    """A tape: ops record their backward closures while running forward; backward replays them."""

    def __init__(self, training=True):
        self.training = training
        self._tape = []
        self.selections = {}  # parameter Tensor -> the meProp Selection its backward used

    def selected(self, param, selection):
        """Note that `param` (a weight) received gradient only on `selection`'s rows; the
        optimizer's row ("lazy") updates take these (`optimizer.step(flow.selections)`)."""
        self.selections[param] = selection

    def record(self, backward_fn):
        if self.training:
            self._tape.append(backward_fn)

    def backward(self):
        """Run every recorded backward in reverse order of recording, then clear the tape."""
        for fn in reversed(self._tape):
            fn()
        self._tape.clear()
