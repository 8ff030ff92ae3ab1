"""Draw docs/figures/architecture.png: the data flow of one `nnprefine run`.

python docs/figures/architecture.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

STAGES = [
    ("init", "stages/initial_data.py", "lattice · slabs ·\nreference-driven impacts"),
    ("refine", "stages/refinement.py", "train → explore →\nselect → label, repeat"),
    ("train", "stages/training.py", "final committee ·\nparity · lattice"),
    ("sputter", "stages/production.py", "impact campaigns\nwith member 1"),
    ("report", "stages/report.py", "summary.json ·\nfigures · HTML"),
]
STORES = ["slabs/, stages/lattice.json", "data.db (labels)", "models/", "results.db", "report.html"]
LIBRARY = [
    "structures · reference\ntrajectories · impact\nmd · dataset",
    "training · model\ndescriptors · trajectories\nselection · reference",
    "training · model\ncalculators · structures",
    "sputter · impact · md\ncalculators",
    "report · yields",
]


OUTPUT = Path(__file__).with_name("architecture.png")


def main(path: Path = OUTPUT) -> Path:
    fig, ax = plt.subplots(figsize=(12, 5.2))
    ax.set_xlim(-0.6, 4.6)
    ax.set_ylim(-0.2, 4.3)
    ax.axis("off")

    def box(x, y, w, h, text, color, size=9, weight="normal"):
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", fc=color, ec="0.3"
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=size, weight=weight)

    ax.text(
        -0.55,
        4.1,
        "config.py: one TOML file → checked sections + domain settings "
        "(TrainingSettings, ImpactSettings, SelectionSettings, symmetry functions)",
        fontsize=9,
        style="italic",
    )
    for i, (name, module, what) in enumerate(STAGES):
        box(i, 3.2, 0.85, 0.9, f"{name}\n{module}\n{what}", "#dbe7f3", size=8)
        if i:
            ax.annotate(
                "", (i - 0.43, 3.2), (i - 0.57, 3.2), arrowprops=dict(arrowstyle="->", lw=1.5)
            )
        box(i, 1.9, 0.85, 0.45, STORES[i], "#f3ead0", size=8)
        ax.annotate("", (i, 2.13), (i, 2.74), arrowprops=dict(arrowstyle="-|>", lw=1))
    for x, text in enumerate(LIBRARY):
        box(x, 0.55, 0.85, 0.75, text, "#e3f1df", size=8)
    for i in range(5):
        ax.plot([i, i], [0.93, 1.67], color="0.6", lw=0.8, ls=":")
    ax.text(-0.55, 2.45, "project folder\n(written as results\narrive; resumable)", fontsize=8)
    ax.text(-0.55, 1.1, "library\n(no project,\nno config)", fontsize=8)
    ax.text(
        2,
        3.9,
        "pipeline.py: STAGES in run order; run · status",
        ha="center",
        fontsize=9,
        weight="bold",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(main())
