"""The compiled layer: wire readers generated from the .proto descriptors (wiregen), see README.md."""
