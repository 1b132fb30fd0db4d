"""Migration and reconciliation between archives: inventories, comparison, transfer."""
