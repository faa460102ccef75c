# FCOS from scratch: backbone + FPN + heads, target assignment, loss and decoding with
# NMS. This cell is the same in every chapter that uses it (a test checks it against
# tools/snippets/fcos.py).
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import default_collate
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

WIDTHS = (16, 32, 64, 96, 128)   # channels of the backbone's stem and four stages
RETURN_NODES = {"stage2": "c3", "stage3": "c4", "stage4": "c5"}
LEVELS = ("p3", "p4", "p5")
STRIDES = {"p3": 8, "p4": 16, "p5": 32}
# Range of max(l, t, r, b) each level is responsible for (chosen in the FCOS chapter so
# that every object of the scenes gets a positive location).
LEVEL_RANGES = {"p3": (0, 32), "p4": (32, 48), "p5": (48, math.inf)}
SCORE_THRESHOLD, NMS_THRESHOLD, TOP_K, MAX_DETECTIONS = 0.05, 0.6, 1000, 100
FCOS_LOSS_TERMS = ("classification", "giou", "centerness")   # the trained terms


# Backbone and feature pyramid.
def conv_bn_relu(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def stage(c_in, c_out):
    """Halve the resolution, then one more 3x3 convolution."""
    return nn.Sequential(conv_bn_relu(c_in, c_out, stride=2),
                         conv_bn_relu(c_out, c_out))


class TinyBackbone(nn.Module):
    """(B, 1, H, W) -> (B, 128, H/32, W/32); stage2, 3 and 4 have strides 8, 16, 32."""

    def __init__(self, widths=WIDTHS):
        super().__init__()
        self.stem = conv_bn_relu(1, widths[0], stride=2)   # stride 2
        self.stage1 = stage(widths[0], widths[1])           # stride 4
        self.stage2 = stage(widths[1], widths[2])           # stride 8: C3
        self.stage3 = stage(widths[2], widths[3])           # stride 16: C4
        self.stage4 = stage(widths[3], widths[4])           # stride 32: C5

    def forward(self, x):
        return self.stage4(self.stage3(self.stage2(self.stage1(self.stem(x)))))


class FPN(nn.Module):
    """{"c3": (B, C3, H/8, W/8), "c4": ..., "c5": ...} -> {"p3", "p4", "p5"} of width
    `channels`, finest first."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.lateral = nn.ModuleDict({name: nn.Conv2d(c, channels, 1)
                                      for name, c in in_channels.items()})
        self.output = nn.ModuleDict({name: nn.Conv2d(channels, channels, 3, padding=1)
                                     for name in in_channels})

    def forward(self, features):
        names = list(features)                                  # ["c3", "c4", "c5"]
        merged = self.lateral[names[-1]](features[names[-1]])
        outputs = {names[-1]: self.output[names[-1]](merged)}
        for name in reversed(names[:-1]):                       # top-down: c4, then c3
            upsampled = F.interpolate(merged, scale_factor=2, mode="nearest")
            merged = self.lateral[name](features[name]) + upsampled
            outputs[name] = self.output[name](merged)
        return OrderedDict(("p" + name[1:], outputs[name]) for name in names)


class BackboneFPN(nn.Module):
    """(B, 1, H, W), H and W multiples of 32 -> OrderedDict p3, p4, p5."""

    def __init__(self, channels=64, widths=WIDTHS):
        super().__init__()
        self.body = create_feature_extractor(TinyBackbone(widths), RETURN_NODES)
        self.fpn = FPN({"c3": widths[2], "c4": widths[3], "c5": widths[4]}, channels)
        self.out_channels = channels   # the attribute torchvision's detectors read

    def forward(self, images):
        return self.fpn(self.body(images))


# Heads, shared by all levels.
def tower(channels, depth):
    layers = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1),
                   nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class DetectionHead(nn.Module):
    """Pyramid maps [(B, C, H_l, W_l)] -> {"cls": (B, L, K), "reg": (B, L, 4) deltas,
    "ctr": (B, L, 1) centerness logits}, levels concatenated in order."""

    def __init__(self, channels, num_classes, depth=2, prior=0.01):
        super().__init__()
        self.cls_tower = tower(channels, depth)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.box_tower = tower(channels, depth)
        self.bbox_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.bbox_ctr = nn.Conv2d(channels, 1, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior) / prior))

    def forward(self, features):
        # (B, C, H, W) -> (B, H W, C), row by row like the locations
        flat = lambda y: y.permute(0, 2, 3, 1).flatten(1, 2)
        outputs = {"cls": [], "reg": [], "ctr": []}
        for feature in features:
            cls_feature, box_feature = self.cls_tower(feature), self.box_tower(feature)
            outputs["cls"].append(flat(self.cls_logits(cls_feature)))
            outputs["reg"].append(flat(F.relu(self.bbox_reg(box_feature))))
            outputs["ctr"].append(flat(self.bbox_ctr(box_feature)))
        return {name: torch.cat(values, dim=1) for name, values in outputs.items()}


class FCOSDetector(nn.Module):
    """(B, 1, H, W) -> the head's {"cls", "reg", "ctr"} over all L locations."""

    def __init__(self, num_classes, channels=64, head_convs=2, widths=WIDTHS):
        super().__init__()
        self.backbone = BackboneFPN(channels, widths)
        self.head = DetectionHead(channels, num_classes, head_convs)

    def forward(self, images):
        return self.head(list(self.backbone(images).values()))


# Locations, assignment, box deltas, centerness.
def level_locations(height, width, stride, device=None):
    """(height * width, 2) points (x, y) in image pixels, row by row: the centres of a
    height x width feature map's cells."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device),
                                torch.arange(width, device=device), indexing="ij")
    cells = torch.stack([cols, rows], dim=-1).reshape(-1, 2).float()
    return cells * stride + stride // 2


def pyramid_locations(height, width, device=None):
    """Locations of all levels of a (height, width) image: points (L, 2), strides (L,)
    and the number of locations of each level (L is their sum)."""
    points, strides, counts = [], [], []
    for level in LEVELS:
        stride = STRIDES[level]
        level_points = level_locations(height // stride, width // stride, stride,
                                       device)
        points.append(level_points)
        strides.append(torch.full((len(level_points),), float(stride), device=device))
        counts.append(len(level_points))
    return torch.cat(points), torch.cat(strides), counts


def assign_locations(points, boxes, lower, upper):
    """Match locations to boxes. points (L, 2); boxes (M, 5) rows (x1, y1, x2, y2,
    class), rows of class -1 ignored. A location matches a box when it lies strictly
    inside it and lower < max(l, t, r, b) <= upper; of several matches the smallest box
    wins. Returns the (L,) index of the matched row, -1 for background."""
    x, y = points[:, 0:1], points[:, 1:2]                          # (L, 1)
    x1, y1, x2, y2, label = boxes.T[:, None]                       # each (1, M)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)   # (L, M, 4)
    reach = ltrb.max(dim=-1).values                                # (L, M)
    ok = ((ltrb.min(dim=-1).values > 0) & (reach > lower) & (reach <= upper)
          & (label >= 0))
    area = torch.where(ok, (x2 - x1) * (y2 - y1), torch.inf)       # (L, M)
    # One extra column of inf, so that an image without boxes works too.
    area = torch.cat([area, torch.full_like(points[:, :1], torch.inf)], dim=1)
    smallest, index = area.min(dim=1)
    return torch.where(smallest.isinf(), -1, index)


def fcos_matches(rows, image_size=(128, 128)):
    """Matched row of every location of an image, levels concatenated (L,); -1 for
    background. rows (M, 5) as in assign_locations."""
    points, _, counts = pyramid_locations(*image_size, device=rows.device)
    return torch.cat([assign_locations(level_points, rows, *LEVEL_RANGES[level])
                      for level, level_points in zip(LEVELS, points.split(counts))])


def encode_deltas(points, strides, boxes):
    """Boxes (..., 4) seen from locations (..., 2), strides (...) -> deltas (..., 4)."""
    x, y = points[..., 0], points[..., 1]
    ltrb = torch.stack([x - boxes[..., 0], y - boxes[..., 1],
                        boxes[..., 2] - x, boxes[..., 3] - y], dim=-1)
    return ltrb / strides[..., None]


def decode_deltas(points, strides, deltas):
    """Deltas (..., 4) at locations (..., 2) with strides (...) -> boxes (..., 4)."""
    ltrb = deltas * strides[..., None]
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - ltrb[..., 0], y - ltrb[..., 1],
                        x + ltrb[..., 2], y + ltrb[..., 3]], dim=-1)


def centerness(deltas):
    """Centerness targets (...) of positive locations from their deltas (..., 4)."""
    left_right, top_bottom = deltas[..., 0::2], deltas[..., 1::2]
    return torch.sqrt(left_right.min(-1).values / left_right.max(-1).values
                      * top_bottom.min(-1).values / top_bottom.max(-1).values)


# Targets of an image (per-level dicts) and of a batch (collated, levels concatenated).
def fcos_image_targets(rows, image_size=(128, 128)):
    """One image's rows (M, 5) -> {level: {"labels": (L_l,), "boxes": (L_l, 4),
    "deltas": (L_l, 4), "centerness": (L_l,)}}; background: label -1, zeros."""
    points, strides, counts = pyramid_locations(*image_size, device=rows.device)
    targets = {}
    for level, level_points, level_strides in zip(LEVELS, points.split(counts),
                                                   strides.split(counts)):
        index = assign_locations(level_points, rows, *LEVEL_RANGES[level])
        foreground = index >= 0
        matched_rows = torch.cat([rows, rows.new_zeros(1, 5)])[index]   # -1 -> zero row
        level_deltas = encode_deltas(level_points, level_strides, matched_rows[:, :4])
        targets[level] = {
            "labels": torch.where(foreground, matched_rows[:, 4].long(), -1),
            "boxes": torch.where(foreground[:, None], matched_rows[:, :4], 0.0),
            "deltas": torch.where(foreground[:, None], level_deltas, 0.0),
            "centerness": torch.where(foreground, centerness(level_deltas), 0.0),
        }
    return targets


def fcos_targets(rows_batch, image_size=(128, 128)):
    """(B, M, 5) -> {key: (B, L, ...)} with the levels concatenated, p3 first."""
    collated = default_collate([fcos_image_targets(rows, image_size)
                                for rows in rows_batch])
    return {key: torch.cat([collated[level][key] for level in LEVELS], dim=1)
            for key in collated[LEVELS[0]]}


# Loss.
class ForegroundAverage:
    """Moving average of the positive count per batch, floored at 1: the normalizer."""

    def __init__(self, momentum=0.9):
        self.momentum, self.value = momentum, None

    def update(self, count):
        count = max(float(count), 1.0)
        self.value = count if self.value is None else (
            self.momentum * self.value + (1 - self.momentum) * count)
        return self.value


def fcos_loss(outputs, targets, points, strides, normalizer):
    """outputs and targets of a batch (B, L, ...); points (L, 2), strides (L,).
    Returns {term: sum over the batch / normalizer}: the FCOS_LOSS_TERMS and, only
    reported, "l1 (deltas)"."""
    foreground = targets["labels"] >= 0                                   # (B, L)
    one_hot = torch.zeros_like(outputs["cls"])                            # (B, L, K)
    one_hot[foreground, targets["labels"][foreground]] = 1.0
    boxes = decode_deltas(points, strides, outputs["reg"])[foreground]    # (P, 4)
    sums = {
        "classification": sigmoid_focal_loss(outputs["cls"], one_hot, reduction="sum"),
        "giou": generalized_box_iou_loss(boxes, targets["boxes"][foreground],
                                         reduction="sum"),
        "centerness": F.binary_cross_entropy_with_logits(
            outputs["ctr"][..., 0][foreground], targets["centerness"][foreground],
            reduction="sum"),
        "l1 (deltas)": F.l1_loss(outputs["reg"][foreground],
                                 targets["deltas"][foreground], reduction="sum"),
    }
    return {name: value / normalizer for name, value in sums.items()}


def fcos_train_step(model, optimizer, images, rows, normalizer):
    """One optimizer step on images (B, 1, H, W) with padded rows (B, M, 5); normalizer
    a ForegroundAverage. Returns the loss terms as floats."""
    model.train()
    points, strides, _ = pyramid_locations(*images.shape[-2:], device=images.device)
    targets = fcos_targets(rows.to(images.device), tuple(images.shape[-2:]))
    count = (targets["labels"] >= 0).sum().item()
    normalizer_value = normalizer.update(count)
    losses = fcos_loss(model(images), targets, points, strides, normalizer_value)
    optimizer.zero_grad(set_to_none=True)
    sum(losses[name] for name in FCOS_LOSS_TERMS).backward()
    optimizer.step()
    return {name: value.item() for name, value in losses.items()}


# Inference: score, threshold, decode, clip, then per-class NMS.
@torch.no_grad()
def fcos_detect(model, images, nms=True, score_threshold=SCORE_THRESHOLD,
                nms_threshold=NMS_THRESHOLD, top_k=TOP_K,
                max_detections=MAX_DETECTIONS):
    """Images (B, 1, H, W) -> per image a dict of boxes (D, 4), scores (D,) and labels
    (D,), best score first. Per level the top_k scores above score_threshold are kept;
    then torchvision's batched_nms (nms=False skips it, to count duplicates). At most
    max_detections per image (None: all)."""
    model.eval()
    outputs = model(images)
    height, width = images.shape[-2:]
    image_points, image_strides, image_counts = pyramid_locations(height, width,
                                                                  images.device)
    detections = []
    for b in range(len(images)):
        boxes, scores, labels = [], [], []
        per_level = [tensor.split(image_counts) for tensor in (
            outputs["cls"][b], outputs["reg"][b], outputs["ctr"][b],
            image_points, image_strides)]
        for cls, reg, ctr, level_points, level_strides in zip(*per_level):
            # (L_l K,): every location and class of the level
            score = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)).flatten()
            keep = torch.nonzero(score > score_threshold).flatten()
            score, order = score[keep].topk(min(top_k, len(keep)))
            keep = keep[order]
            location, label = keep // cls.shape[-1], keep % cls.shape[-1]
            box = decode_deltas(level_points[location], level_strides[location],
                                reg[location])
            box[:, 0::2].clamp_(0, width)
            box[:, 1::2].clamp_(0, height)
            boxes.append(box), scores.append(score), labels.append(label)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        if nms:
            keep = batched_nms(boxes, scores, labels, nms_threshold)
        else:
            keep = scores.argsort(descending=True, stable=True)
        keep = keep[:max_detections]
        detections.append({"boxes": boxes[keep], "scores": scores[keep],
                           "labels": labels[keep]})
    return detections
