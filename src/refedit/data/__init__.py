"""Data: the procedural toyworld, real-data loaders, task builders and the LightningDataModule."""
