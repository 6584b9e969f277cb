"""Generation: the synthetic unlabeled pool and the memorisation report."""
