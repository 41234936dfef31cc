# The tiny CPU F-ViT (configs/fvit_tiny_cpu.py) on an LVIS-style split of the shape scenes:
# circle, square, triangle frequent; hexagon, diamond common; star, cross rare (novel, held out);
# LVIS's federated box AP (AP_r / AP_c / AP_f / AP). The LVIS files are written from the COCO ones
# by detection.write_lvis_style (see docs/detection.md, "CPU smoke run").
_base_ = ["fvit_tiny_cpu.py"]
frequencies = dict(circle="f", square="f", triangle="f", hexagon="c", diamond="c", star="r", cross="r")

train_dataloader = dict(dataset=dict(type="OVLVISDataset", ann_file="annotations/lvis_train.json", base_only=True))
val_dataloader = dict(dataset=dict(type="OVLVISDataset", ann_file="annotations/lvis_val.json"))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type="OVLVISMetric", ann_file=_base_.data_root + "annotations/lvis_val.json")
test_evaluator = val_evaluator
