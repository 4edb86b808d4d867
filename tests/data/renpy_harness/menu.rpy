# A scene with an interpolation, a menu and (by the harness) a rollback to it.

define e = Character("Eileen", voice_tag="eileen")
define l = Character("Lucy", voice_tag="lucy")

define dialogue_tts.voices = {
    "eileen": {"rate": 1.0},
    "lucy": {"rate": 1.2, "pitch": 0.95},
}

default drink = "tea"

label start:
    e "Good evening. Come in from the rain."
    l "Thank you. A cup of [drink], if you would."
    e "Will you have the stew or the bread with it?"
    menu:
        "The stew":
            e "The stew it is, hot from the pot."
        "The bread":
            e "The bread it is, baked this morning."
    l "Thank you. That will do nicely."
    return
