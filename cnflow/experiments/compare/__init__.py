"""CNF versus planar normalizing flows: the paper's Figures 4 and 5.

* :mod:`~cnflow.experiments.compare.density_matching` (Figure 4): fit ``q`` to
  ``p ∝ exp(−U)`` for the energies U1–U4 by reverse KL, ``loss = E_q[log q(x) + U(x)] +
  log Z`` with ``Z`` the target's normaliser on its box, so the loss *is* ``KL(q‖p)``
  whenever ``q`` keeps its mass in the box (the fraction it puts outside is reported with
  every number). U2–U4 do not decay along z1, so without a box ``exp(−U)`` has infinite mass
  and the plain loss is lowered, below zero, by spilling mass along the ridges past the box;
  training therefore adds a soft wall ``κ Σ_i relu(|x_i| − 4)²`` (``box_wall = κ``) to
  ``U``, and the reported KL uses ``U`` alone. Planar NFs with K layers (generative
  direction) against CNFs with M hidden units.
* :mod:`~cnflow.experiments.compare.mle` (Figure 5): a CNF with M = 64 against 64 planar
  layers (normalizing direction), trained on the same batches of two_circles / two_moons;
  test NLL beside the data's entropy, the floor no model can beat.
* :func:`~cnflow.experiments.compare.report.write_report` merges both into one markdown
  document.

Each comparison's ``run(config, out_dir)`` claims its own run folder and writes PNG and
markdown, then ``config.json`` (its settings) and last the JSON result, which holds the exact
command line that reproduces the run, the configuration, per-run numbers and CPU/wall times;
the markdown is generated from it (no number is typed by hand), and a failed run leaves
neither record behind. The two folders sit side by side
(``density_matching/`` and ``mle/``) in the folder the merged report reads.
"""

from cnflow.experiments.compare.density_matching import GOAL_KL, DensityMatchingConfig
from cnflow.experiments.compare.mle import MLEConfig
from cnflow.experiments.compare.report import write_report
from cnflow.experiments.compare.targets import box_wall, reverse_kl

__all__ = ["GOAL_KL", "DensityMatchingConfig", "MLEConfig", "box_wall", "reverse_kl",
           "write_report"]
