"""The paper's Table 1 as an application of the library: recipes, tasks, one pipeline.

Nothing in :mod:`concernet_ode` imports this package; it sits on top of the library and the
py-pde integration, with the ``concernet-ode reproduce`` command on top of it.

Example:
    >>> from concernet_ode.reproduce import Recipe, get_task, run_seed
    >>> result = run_seed(get_task("spring"), 0, Recipe.paper())  # doctest: +SKIP
"""

from .pipeline import METHODS, SeedResult, run_seed
from .recipe import Recipe
from .tasks import TASKS, Task, get_task

__all__ = ["METHODS", "TASKS", "Recipe", "SeedResult", "Task", "get_task", "run_seed"]
