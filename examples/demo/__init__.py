"""The main job: train the default boundaries on a local cluster and write an HTML report of the edits."""
