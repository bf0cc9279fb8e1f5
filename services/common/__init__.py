"""What every server of the cluster needs: settings, runtime, errors, codecs, assets."""
