"""The batch contract between the data modules and the tasks: what a batch holds, the label values
that count nowhere, and the built-in normalisation. Imports nothing, so data, tasks, models and
callbacks all take these from one place.

A batch is a dict:

- ``pixel_values`` (B, 3, H, W) float: normalised images (B may be 0: every image undecodable);
- ``labels``: (B,) class ids for classification, (B, H, W) mask ids for segmentation; absent
  for unlabelled data (predict);
- ``ids``: every input of the batch in order (a file path or a dataset index), decoded or not;
- ``errors``: None or the reason per id (an undecodable input has no row in pixel_values);
- ``sizes`` and ``content``: for segmentation, each image's original (h, w) and the region of
  the padded tensor it fills (masks are predicted at the original size).
"""

PIXEL_VALUES = "pixel_values"
LABELS = "labels"
IDS = "ids"

# a class label that counts nowhere (no loss, no metric): the padding examples that even out
# streams under DDP; torch's cross_entropy default, and transformers' convention
IGNORE_LABEL = -100
# a mask value that counts nowhere: unlabelled pixels, padding, reduce_labels' 0, colours that
# the color_map does not name (mmseg's and transformers' convention for segmentation)
IGNORE_PIXEL = 255

# the built-in normalisation (ImageNet's statistics), where neither the data nor a pretrained
# checkpoint sets one
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# universal segmentation (Mask2Former/OneFormer; nat_lightning.data.universal): per image, a list
# of (N_i, H, W) float binary masks and (N_i,) int64 classes, one per segment; for evaluation the
# (B, H, W, 2) int64 (class, segment) map (torchmetrics' PanopticQuality) and, as LABELS, the
# (B, H, W) int64 class map (IGNORE_PIXEL for void), as for segmentation; pixel_mask (B, H, W)
# int64, 1 where the image is, 0 padding
MASK_LABELS = "mask_labels"
CLASS_LABELS = "class_labels"
PANOPTIC_MAP = "panoptic_map"
PIXEL_MASK = "pixel_mask"
# the (class, segment) of a void pixel of a panoptic map (unlabelled, crowd, padding): no class,
# so torchmetrics' PanopticQuality counts it nowhere
VOID_SEGMENT = -1
