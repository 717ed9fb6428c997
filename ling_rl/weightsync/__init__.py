"""The weight-sync protocol, shared by the learner (sender) and the rollout engines (extension):
layer-by-layer streaming in Hugging Face names, buckets and their metadata, and the transfer
methods (`shm_file`, `object_store`, `nccl`) the driver chooses between."""
