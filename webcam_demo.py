"""Live demo: `python webcam_demo.py --model results/RUN/best_model [--source 0|video.mp4|image.jpg|folder]`."""
from emotion.cli import demo_main

if __name__ == "__main__":
    raise SystemExit(demo_main())
