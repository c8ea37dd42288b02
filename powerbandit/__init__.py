"""powerbandit: an online-learning optimizer that cuts the GPU energy of recurring training jobs.

``powerbandit.__version__`` is the one place the version is written; the package metadata
(``pyproject.toml``) and ``powerbandit --version`` read it from here.
"""

__version__ = "0.2.0"
