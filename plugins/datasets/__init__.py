"""Built-in dataset sources: a folder of images + masks, and the procedural phantom."""
