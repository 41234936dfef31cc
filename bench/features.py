"""Feature-extraction cost at the ViT-B/16 configuration (random weights), on this machine.

1. Region features for one image with many boxes against one plain image forward: the
   regions come from one backbone pass, so the ratio stays near 1 (target <= 1.2).
2. Image-tower throughput against transformers' CLIPVisionModelWithProjection holding the
   same weights (target: ours is not slower, ratio of times <= 1.05 allowing for noise).

Timings are the best of several repeats, measured in this process; exit status 1 if a
target is missed.
"""
import argparse
import sys
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from fgclip import FGCLIPConfig, FGCLIPModel


def best_times(first, second, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` wall time of two callables, run alternately so load spikes hit both."""
    first(), second()  # warm-up
    times = ([], [])
    for _ in range(repeats):
        for fn, record in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def random_boxes(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    corners = torch.rand(count, 2, 2, generator=generator) * size
    low, high = corners.min(dim=1).values, corners.max(dim=1).values + 1
    return torch.cat([low, high.clamp(max=size)], dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boxes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="images per forward for the throughput part")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = FGCLIPConfig.vit_b16()
    model = FGCLIPModel(config).eval()
    size = config.vision_config.image_size
    image = torch.randn(1, 3, size, size)
    boxes = [random_boxes(args.boxes, size, torch.Generator().manual_seed(0))]

    with torch.inference_mode():
        image_time, region_time = best_times(lambda: model.get_image_features(image),
                                             lambda: model.get_region_features(image, boxes), args.repeats)
    region_ratio = region_time / image_time
    print(f"one image forward:            {image_time * 1e3:8.1f} ms")
    print(f"{args.boxes} region features, 1 image: {region_time * 1e3:8.1f} ms   ratio {region_ratio:.2f} (target <= 1.2)")

    reference = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**config.vision_config.to_dict(),
                                                                  "projection_dim": config.projection_dim})).eval()
    reference.vision_model.load_state_dict(model.vision_model.state_dict())
    reference.visual_projection.load_state_dict(model.visual_projection.state_dict())
    batch = torch.randn(args.batch, 3, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(model.get_image_features(batch), reference(pixel_values=batch).image_embeds,
                                   atol=1e-4, rtol=1e-4)
        ours, theirs = best_times(lambda: model.get_image_features(batch),
                                  lambda: reference(pixel_values=batch), args.repeats)
    tower_ratio = ours / theirs
    print(f"image tower, batch {args.batch}: ours {args.batch / ours:6.2f} img/s, "
          f"CLIPVisionModelWithProjection {args.batch / theirs:6.2f} img/s   time ratio {tower_ratio:.3f} (target <= 1.05)")
    ok = region_ratio <= 1.2 and tower_ratio <= 1.05
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
