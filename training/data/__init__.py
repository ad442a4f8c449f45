"""Training data: COCO-format datasets with augmentation, and the synthetic generators the bundled model was
trained (`shapes`) and independently validated (`drawn`) on."""
