"""Every refloss loss as a HIPS-autograd primitive whose VJP is the hand-derived one.

``autograd.grad`` differentiates straight through a refloss loss: the loss is evaluated on plain
arrays and autograd is handed the analytic gradient, never a traced one. Importing this module does
not import autograd; the first loss called with an autograd box does.
"""

from __future__ import annotations


def primitive(loss):
    """The autograd primitive of ``loss``: ``f(*inputs, **params)`` with inputs positional."""
    cached = getattr(loss, "_autograd_primitive", None)
    if cached is not None:
        return cached
    from autograd.extend import defvjp_argnum, primitive as ag_primitive

    def evaluate(*inputs, **params):
        return loss(*inputs, **params)

    evaluate.__name__ = loss.name
    prim = ag_primitive(evaluate)

    def make_vjp(argnum, ans, args, kwargs):
        spec = loss.inputs[argnum]
        if not spec.differentiable:
            raise TypeError(f"{loss.name}: {spec.name} is not differentiable")

        def vjp(g):
            return loss.vjp(g, *args, **kwargs)[argnum]

        return vjp

    defvjp_argnum(prim, make_vjp)
    loss._autograd_primitive = prim
    return prim


def call_primitive(loss, args, kwargs):
    """Call ``loss`` through its primitive, moving inputs given by keyword to their positions."""
    names = [i.name for i in loss.inputs]
    kwargs = dict(kwargs)
    inputs = list(args)
    for name in names[len(inputs):]:
        if name not in kwargs:
            raise TypeError(f"{loss.name}: missing input {name}")
        inputs.append(kwargs.pop(name))
    return primitive(loss)(*inputs, **kwargs)
