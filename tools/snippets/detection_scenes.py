# Detection scenes: Fashion-MNIST items pasted at several scales on blank canvases.
# This cell is the same in every chapter that uses them (a test checks it against
# tools/snippets/detection_scenes.py).
import torch
import torch.nn.functional as F

MAX_OBJECTS = 4  # box rows per scene; unused rows are all -1


def _tight_item(image, longest, shortest):
    """One (28, 28) uint8 item resized so the longer side of its tight box (pixels above
    0.1) is `longest` pixels, grown if needed so the shorter side is `shortest`; returns
    the (h, w) crop in [0, 1]."""
    item = image.float() / 255
    rows = (item > 0.1).any(dim=1).nonzero().flatten()
    cols = (item > 0.1).any(dim=0).nonzero().flatten()
    item = item[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = item.shape
    scale = max(longest / max(h, w), shortest / min(h, w))
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    item = F.interpolate(item[None, None], size=size, mode="bilinear",
                         antialias=True, align_corners=False)[0, 0]
    return item.clamp_(0, 1)


def _iou(a, b):
    """IoU of two boxes (x1, y1, x2, y2) given as tuples."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def make_scenes(images, labels, count, seed, canvas=128, longest=(16, 64),
                shortest=10, objects=(1, MAX_OBJECTS), max_iou=0.2):
    """`count` scenes of `canvas` x `canvas` grey pixels in [0, 1], each holding
    objects[0] to objects[1] items drawn from `images` (N, 28, 28) uint8 with classes
    `labels` (N,), pasted (pixel-wise maximum) at a random place and scale: the longer
    side of an item's box is drawn uniformly from `longest`, its shorter side is at
    least `shortest`, and no two boxes of a scene overlap with IoU above `max_iou`.

    Returns scenes (count, 1, canvas, canvas) float32 and boxes (count, MAX_OBJECTS, 5)
    float32: rows (x1, y1, x2, y2, class) in pixels, the tight box of the item's pixels
    (x2 and y2 exclusive: an item on columns 3..10 has x1 = 3, x2 = 11), unused rows
    all -1. Deterministic: the same arguments give the same scenes.
    """
    generator = torch.Generator().manual_seed(seed)

    def randint(low, high):  # an integer in [low, high]
        return int(torch.randint(low, high + 1, (), generator=generator))

    scenes = torch.zeros(count, 1, canvas, canvas)
    boxes = torch.full((count, MAX_OBJECTS, 5), -1.0)
    for i in range(count):
        placed = []
        for _ in range(randint(*objects)):
            index = randint(0, len(images) - 1)
            item = _tight_item(images[index], randint(*longest), shortest)
            h, w = item.shape
            for _attempt in range(20):
                x, y = randint(0, canvas - w), randint(0, canvas - h)
                box = (x, y, x + w, y + h)
                if all(_iou(box, other) <= max_iou for other in placed):
                    break
            else:
                continue  # no free place for this item: the scene gets one fewer
            region = scenes[i, 0, y : y + h, x : x + w]
            torch.maximum(region, item, out=region)
            boxes[i, len(placed)] = torch.tensor([*box, int(labels[index])])
            placed.append(box)
    return scenes, boxes
