import pytest
from PIL import Image

from vchain.errors import ConfigurationError
from vchain.images import fit_to_frame, stitch
from vchain.testing import draw_image


@pytest.mark.parametrize("n", range(2, 13))
@pytest.mark.parametrize("budget", [1024 * 1024, 512 * 512])
def test_composite_stays_within_its_pixel_budget(n, budget):
    images = [draw_image(str(i), 832, 480) for i in range(n)]
    composite = stitch(images, budget)
    width, height = composite.size
    assert width * height <= budget
    # The budget is used, not wasted: at least half of it whatever the chain's length.
    assert width * height >= budget // 2


def test_composite_keeps_chain_order():
    red, blue = Image.new("RGB", (100, 50), "red"), Image.new("RGB", (100, 50), "blue")
    composite = stitch([red, blue], 10**6, label=False)
    assert composite.getpixel((50, 25)) == (255, 0, 0)
    assert composite.getpixel((150, 25)) == (0, 0, 255)


def test_small_chains_are_not_upscaled():
    composite = stitch([draw_image("a", 64, 32)] * 2, 10**6)
    assert composite.size == (128, 32)


def test_stitch_rejects_empty():
    with pytest.raises(ConfigurationError, match="images"):
        stitch([], 1000)


@pytest.mark.parametrize("size", [(1536, 1024), (1024, 1024), (1024, 1536), (832, 480)])
def test_fit_to_frame_gives_the_exact_frame(size):
    image = fit_to_frame(Image.new("RGBA", size), 832, 480)
    assert image.size == (832, 480) and image.mode == "RGB"


def test_fit_to_frame_crops_instead_of_stretching():
    # A centred square disc stays round after fitting a square image into a wide frame.
    image = Image.new("RGB", (1000, 1000), "white")
    image.paste((0, 0, 0), (400, 400, 600, 600))
    fitted = fit_to_frame(image, 400, 200)
    dark = [(x, y) for x in range(400) for y in range(200) if fitted.getpixel((x, y))[0] < 128]
    xs, ys = [x for x, _ in dark], [y for _, y in dark]
    assert abs((max(xs) - min(xs)) - (max(ys) - min(ys))) <= 2
