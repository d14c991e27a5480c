"""Image helpers of the reasoning stage: fitting images to the video frame, stitching the chain."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageOps

from vchain.errors import ConfigurationError


def fit_to_frame(image: Image.Image, width: int, height: int) -> Image.Image:
    """Bring an image to the video generator's frame: scale to cover, then crop the centre.

    This is the one place where keyframes take the generator's aspect ratio and size. Image models
    return a few fixed sizes (gpt-image-1: 1024x1024, 1536x1024, 1024x1536); cropping keeps the
    geometry undistorted, which matters more to the tuner than the few pixels lost at the borders.
    """
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def stitch(images: list[Image.Image], max_pixels: int, *, label: bool = True) -> Image.Image:
    """Tile the chain so far into one image whose pixel count never exceeds `max_pixels`.

    A vision model bills an image by its size, so a fixed budget keeps every perception call at about
    the same cost however long the chain grows, where a plain row of full-size images would grow the
    bill with every keyframe. Tiles run left to right, top to bottom, in chain order, each numbered.
    """
    if not images:
        raise ConfigurationError("images must hold at least one image to stitch, got an empty list")
    if max_pixels < len(images):
        raise ConfigurationError(
            f"max_pixels must allow a pixel per image, got {max_pixels} for {len(images)}"
        )
    width, height = images[0].size
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    scale = min(1.0, math.sqrt(max_pixels / (columns * rows * width * height)))
    tile_w, tile_h = max(1, int(width * scale)), max(1, int(height * scale))
    while columns * tile_w * rows * tile_h > max_pixels:  # int() rounding can only overshoot by a pixel
        tile_w, tile_h = max(1, tile_w - 1), max(1, tile_h - 1)
    canvas = Image.new("RGB", (columns * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        x, y = (i % columns) * tile_w, (i // columns) * tile_h
        canvas.paste(image.convert("RGB").resize((tile_w, tile_h), Image.Resampling.LANCZOS), (x, y))
        if label:
            size = max(8, tile_h // 10)
            draw.rectangle((x, y, x + 2 * size, y + size + 4), fill="black")
            draw.text((x + 3, y + 2), str(i), fill="white", font_size=size)
    return canvas
