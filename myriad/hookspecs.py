"""The whole plugin contract of Myriad: one hook.

A plugin is a Python distribution that declares an entry point in the group
``myriad`` pointing at a module with a ``@hookimpl``-decorated
``register_experts(register)`` function::

    # pyproject.toml of the plugin
    [project.entry-points.myriad]
    my_expert = "my_expert_package.plugin"

    # my_expert_package/plugin.py
    from myriad.api import hookimpl

    @hookimpl
    def register_experts(register):
        register(
            "my-expert",
            factory="my_expert_package.expert:MyExpert",  # imported only when used
            config=MyExpertConfig,                        # a pydantic model
            modes=["few_shot"],
            description="One line saying what it does.",
        )

Keep this module free of heavy imports: discovery must stay instant.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "myriad"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_experts(register: Callable[..., None]) -> None:
    """Register zero or more vision experts by calling ``register``.

    ``register(name, *, factory, config, modes, description, transductive=False)``:

    - ``name``: unique expert name used on the command line (``--expert NAME``).
    - ``factory``: the :class:`myriad.experts.Expert` subclass, or a ``"module:attr"``
      string naming it so that heavy modules (torch, faiss) load only when the
      expert is used. It is called as ``factory(config)``.
    - ``config``: a pydantic ``BaseModel`` subclass holding every setting of the
      expert, with defaults. Import it cheaply (no torch at module level).
    - ``modes``: the modes the expert supports, from ``zero_shot``, ``few_shot`` and
      ``one_class``.
    - ``description``: one line for ``myriad experts``.
    - ``transductive``: True if ``predict`` scores a batch of unlabeled images
      jointly (as MuSc does), so results depend on the batch.

    An invalid call (unknown or no modes, a name with spaces, a config that is not a
    pydantic model, a multi-line description, a name used twice) or an exception in
    this hook drops every registration of the plugin, reported once as a
    :class:`myriad.errors.PluginError`; other plugins are unaffected.

    At run time the host checks every prediction of the expert
    (:meth:`myriad.experts.Expert.predict`): an ``H x W`` map of the image's own size,
    float32 (float64 is converted; other dtypes are refused), every value and the score
    finite. A violation raises :class:`myriad.errors.ContractError` naming the expert
    and the image's index in the batch.

    .. versionadded:: 0.1.0
    """
