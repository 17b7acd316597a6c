"""A procedural scene world with computable truth: the proof that NP-Edit teaches edits, measured by classical
verifiers that no VLM can fake. It supplies scenes, edits and scores; training and the builder stay world-agnostic."""

from pathlib import Path

# The committed world models (vae/, teacher/, critic/), each with a manifest: config, seed, command, measured quality.
PRETRAINED = Path(__file__).parent / "pretrained"
# A teacher with a token per latent pixel (`world build --teacher-patch 1`, on a GPU) beside the committed critic,
# and the DMD weight it trains editors with (its recipe.toml).
PRETRAINED_PATCH1 = Path(__file__).parent / "pretrained_patch1"
# The same teacher beside the committed critic annealed again with "the asked change made to another object" among
# its No cases (findings section 28): 95.1 % on held-out questions, 88.3 % on that change alone (the committed: 75.8).
PRETRAINED_WHOM = Path(__file__).parent / "pretrained_whom"
# A models folder may hold a recipe.toml beside them: the world_cpu values NP-Edit trains with from these models.
RECIPE_FILE = "recipe.toml"
