"""Evaluation (paper §4, Table 1), the one path `portrait-edit validate` runs: the held-out streams
(held_out.py), the table's rows (methods.py: MCDM exports, the baselines of baselines.py, and the
references: the input itself, its VAE round trip, the exact target, the latent grid's best mask), the
scores (judges.py), the per-item cache (cache.py) and the pages (report.py; the paper's Table 1 beside
ours in paper_table1.py). systems/evaluation.py is the LightningModule over them."""
