# dialogue-tts example: two characters and a narrator, voiced live by a local
# dialogue-tts server (run `dialogue-tts serve` first).
#
# game/dialogue_tts/ is the binding from integrations/renpy/game/dialogue_tts/
# (a symbolic link here: copy the folder in your own game).

# Eileen's words appear as her voice says them (dialogue_tts.reveal_say); Lucy's
# and the narrator's at the text speed, as usual.
define e = Character("Eileen", voice_tag="eileen", show_function=dialogue_tts.reveal_say)
define l = Character("Lucy", voice_tag="lucy")

# The server has one voice built in; rate, pitch and volume still tell speakers
# apart. Extra Piper voices (dialogue-tts serve --voices DIR) are named with "voice".
define dialogue_tts.voices = {
    "eileen": {"rate": 1.0},
    "lucy": {"rate": 1.2, "volume": 0.9, "pitch": 0.95},
}

# The game's cast (Eileen's pitch and her "warm" style), sent to the server when
# the game connects.
define dialogue_tts.cast_file = "cast.toml"

# Narration is silent unless given settings.
define dialogue_tts.narrator = {"rate": 0.9}

default player_name = "Lucy"

# A button that silences the line being spoken.
screen voice_controls():
    textbutton _("Stop voice") action DialogueTTSSkip() xalign 1.0 yalign 0.0

label start:

    show screen voice_controls

    "The tavern is quiet tonight."

    e "Welcome back, {b}friend{/b}.{w=0.5} Stew again?"

    l "Yes, please. And some bread, if there is any left."

    e "There is always bread for you, [player_name]."

    l "The road was cold, the rain never stopped, and the bridge at the ford was gone, so we walked the long way round the hills, past the old mill and the empty farms."

    "Eileen laughs and fills two bowls."

    e "Sit down. Eat." (cb_tts_style="warm")

    return
