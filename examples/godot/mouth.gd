extends Control
## A character's mouth: an ellipse whose width and height follow the viseme it is given, one
## of [code]DialogueTTS.VISEMES[/code] (open for vowels, pressed for p/b/m, a line when silent).
## main.gd sets [member viseme] from [code]DialogueTTS.viseme_changed[/code].

## Width and height of the mouth, in pixels, for each viseme.
const SHAPES: Dictionary = {
	"sil": Vector2(30, 3),
	"PP": Vector2(26, 2),
	"FF": Vector2(28, 7),
	"TH": Vector2(28, 9),
	"DD": Vector2(28, 11),
	"kk": Vector2(30, 13),
	"CH": Vector2(20, 14),
	"SS": Vector2(32, 7),
	"nn": Vector2(28, 10),
	"RR": Vector2(20, 13),
	"aa": Vector2(30, 24),
	"E": Vector2(32, 16),
	"ih": Vector2(32, 11),
	"oh": Vector2(20, 20),
	"ou": Vector2(14, 14),
}
const COLOR: Color = Color(0.6, 0.15, 0.2)
const POINTS: int = 24

## The viseme drawn.
var viseme: String = "sil":
	set(value):
		viseme = value
		queue_redraw()


func _draw() -> void:
	var shape: Vector2 = SHAPES.get(viseme, SHAPES["sil"])
	var outline := PackedVector2Array()
	for i: int in POINTS:
		var angle: float = TAU * i / POINTS
		outline.append(Vector2(cos(angle) * shape.x, sin(angle) * shape.y) * 0.5)
	draw_colored_polygon(outline, COLOR)
