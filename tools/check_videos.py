"""Before a long run on a folder of videos: which files cannot be used, from their headers.

    python tools/check_videos.py --data_path DIR [--num_frames 16]

Reads every file's header (not its frames), prints why each unusable file cannot be used and
exits 2 if there is any; a run skips such a file when it draws it (another is drawn in its place)
and names it once. A file damaged after its header is found only when a clip is drawn.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402


def read_header(path, num_frames):
    """A video file's shape from its header (a memory map for .npy), checked as a run checks
    it; ValueError naming the file. mp4/avi/webm may not store their frame count (0)."""
    try:
        if path.endswith(".npy"):
            shape = np.load(path, mmap_mode="r").shape
        else:
            import imageio.v3 as iio
            shape = iio.improps(path, index=None).shape
    except Exception as e:  # numpy and imageio raise many kinds; name the file either way
        raise ValueError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    data.check_video_shape(path, shape, num_frames, counted=path.endswith((".npy", ".gif")))
    return shape


def check(folder):
    """-> {path: why it cannot be used} for every file of a data.VideoFolder, from headers."""
    problems = {}
    for path in folder.files:
        try:
            read_header(path, folder.num_frames)
        except ValueError as e:
            problems[path] = str(e)
    return problems


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_path", required=True, help="the video folder (train.py's --data_path)")
    p.add_argument("--num_frames", type=int, default=16, help="frames a clip needs")
    a = p.parse_args(argv)
    folder = data.VideoFolder(a.data_path, a.num_frames)
    problems = check(folder)
    for why in problems.values():
        print(why)
    if problems:
        raise ValueError(f"{len(problems)} of {len(folder.files)} files under {a.data_path} "
                         "cannot be used (listed above); a run skips them when it draws them")
    print(f"all {len(folder.files)} files under {a.data_path} have a readable header and at "
          f"least num_frames={a.num_frames} frames (their frames are read when drawn)")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
