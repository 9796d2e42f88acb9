"""Reads a run directory's event files with TensorBoard's own reader and prints what it sees.

    pip install tensorboard
    python docs/tools/tensorboard_read.py runs/quickstart-0

Exits non-zero when TensorBoard finds no scalars or no images (docs/looking.md).
"""

import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run_dir: str) -> int:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in sorted(tags["scalars"]):
        points = events.Scalars(tag)
        last = points[-1]
        print(f"scalar {tag}: {len(points)} points, last step {last.step} value {last.value:.6g}")
    for tag in sorted(tags["images"]):
        images = events.Images(tag)
        last = images[-1]
        print(
            f"image {tag}: {len(images)} at steps {[i.step for i in images]}, "
            f"{last.width}x{last.height}, {len(last.encoded_image_string)} PNG bytes"
        )
    if not tags["scalars"] or not tags["images"]:
        print("TensorBoard found no scalars or no images", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
