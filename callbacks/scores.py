"""The alignment suite's scoring functions, at their documented place (``perceptlab.callbacks.scores``).

They live in the leaf layer, :mod:`perceptlab.core.scores`, because stage 1 scores its validation
2AFC with them too; this module re-exports them so user code written against the design
contract keeps working.
"""
from perceptlab.core.scores import *  # noqa: F401,F403
from perceptlab.core.scores import __all__  # noqa: F401
