"""Ray placement: resource pools, actor groups, colocated or split roles."""
