"""``emoji``: colour emoji rendered from the system's Noto Color Emoji font, captioned with their
names from the ``emoji`` package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from PIL import Image

from chain_of_diffusion.data.sources.common import Candidate, SourceData, collect
from chain_of_diffusion.errors import DataError

if TYPE_CHECKING:
    from chain_of_diffusion.config import DataConfig

EMOJI_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/truetype/NotoColorEmoji.ttf",
)
EMOJI_FONT_SIZE = 109  # CBDT bitmap strikes load only at their own size


def _emoji_font_path(cfg: DataConfig) -> Path:
    candidates = [cfg.path] if cfg.path else list(EMOJI_FONT_PATHS)
    for candidate in candidates:
        if Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    raise DataError(
        "data.source=emoji needs the Noto Color Emoji font: apt-get install fonts-noto-color-emoji "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def _emoji_caption(chars: str, name: str) -> str:
    """':red_apple:' -> 'red apple emoji'; flags, named by country alone, read 'flag of Japan emoji'."""
    words = name.strip(":").replace("_", " ")
    return f"flag of {words} emoji" if _is_flag(chars) else f"{words} emoji"


def _is_flag(chars: str) -> bool:
    # regional-indicator pairs, and the black flag + tag sequences (England, Scotland, Wales)
    return all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in chars) or (
        chars.startswith("\U0001f3f4") and any(0xE0020 <= ord(c) <= 0xE007F for c in chars)
    )


def _emoji_candidates(raqm: bool) -> list[tuple[str, str]]:
    """(characters, caption) for each fully-qualified emoji, in the ``emoji`` package's order.

    Without raqm, Pillow lays out one codepoint per glyph, so only single-codepoint emoji (an
    optional trailing U+FE0F aside) can come out as one picture.
    """
    import emoji

    fully_qualified = emoji.STATUS["fully_qualified"]
    out = []
    for chars, info in emoji.EMOJI_DATA.items():
        if info.get("status") != fully_qualified:
            continue
        if not raqm and len(chars.replace("\ufe0f", "")) != 1:
            continue
        out.append((chars, _emoji_caption(chars, info["en"])))
    return out


class _EmojiRenderer:
    """Draws one emoji as a white-background RGB square (glyph bbox, padded), or None."""

    def __init__(self, font_path: Path):
        from PIL import ImageDraw, ImageFont, features

        self.raqm = bool(features.check("raqm"))
        layout = ImageFont.Layout.RAQM if self.raqm else ImageFont.Layout.BASIC
        try:
            self.font = ImageFont.truetype(str(font_path), EMOJI_FONT_SIZE, layout_engine=layout)
        except OSError as err:
            raise DataError(
                f"{font_path}: cannot load the emoji font at size {EMOJI_FONT_SIZE} ({err})"
            ) from None
        self._draw = ImageDraw
        # an emoji the font has no single glyph for comes out as several glyphs side by side
        self.max_advance = 1.5 * self.font.getlength("\U0001f600")
        # Noto draws nothing for a missing glyph, but another build of the font may draw a box
        notdef = self._draw_glyph("\U0010ffff")
        self.notdef = None if notdef is None else notdef.tobytes()

    def _draw_glyph(self, chars: str) -> Optional[Image.Image]:
        """The drawn glyph cropped to its opaque pixels (RGBA), or None if nothing is drawn."""
        probe = self._draw.Draw(Image.new("RGBA", (1, 1)))
        left, top, right, bottom = probe.textbbox((0, 0), chars, font=self.font, embedded_color=True)
        if right <= left or bottom <= top:
            return None
        canvas = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        self._draw.Draw(canvas).text((-left, -top), chars, font=self.font, embedded_color=True)
        bbox = canvas.getchannel("A").getbbox()
        return None if bbox is None else canvas.crop(bbox)

    def render(self, chars: str) -> Optional[Image.Image]:
        if self.font.getlength(chars) > self.max_advance:
            return None
        glyph = self._draw_glyph(chars)
        if glyph is None or (self.notdef is not None and glyph.tobytes() == self.notdef):
            return None
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        return square.convert("RGB")


def load(cfg: DataConfig) -> SourceData:
    """Every fully-qualified emoji of the ``emoji`` package that Noto Color Emoji draws as one glyph,
    captioned with its English name ("red apple emoji"), in the package's order.

    Emoji the font lacks (newer than the font, or sequences it draws as several glyphs) are not
    part of the set and do not count as skipped. All ~3,800 render in a few seconds, so there is no
    cache. ``data.path`` may name another copy of the font file.
    """
    font_path = _emoji_font_path(cfg)
    renderer = _EmojiRenderer(font_path)

    def candidates() -> Iterator[Candidate]:
        # rendered lazily, so a max_images cap renders only what it keeps
        for chars, caption in _emoji_candidates(renderer.raqm):
            image = renderer.render(chars)
            if image is not None:
                yield Candidate(
                    origin="emoji:" + "+".join(f"U{ord(c):04X}" for c in chars),
                    decode=lambda im=image: im,
                    text=caption,
                )

    return collect(candidates(), cfg)
