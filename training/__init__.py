"""Training, apart from serving: the trainer (`train`, `step`, `losses`), the data generators (`data`), COCO
evaluation (`evaluate`) and the images the package ships (`examples`). Nothing in model/ or service/ imports it."""
