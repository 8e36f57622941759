"""The evaluation layer: ``udiff eval`` (label accuracy, FID/KID, diversity), the reference
classifier, feature spaces and reconstruction scores, training curves, and a configuration's
size and cost on the meta device."""
