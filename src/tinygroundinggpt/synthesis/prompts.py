"""The paper's own prompts (Figs. 7, 10, 11, 12 and Table 7), quoted so that runs follow the paper.

Placeholders in braces are filled by :mod:`tinygroundinggpt.synthesis.stages`; the image itself is
sent as an attached image, so ``{image}`` reads "the attached image". Where the paper's prompt leaves
the reply format loose, a one-line ``FORMAT_*`` suffix pins it down so replies can be parsed; the
suffix restates the paper's format and adds nothing else.
"""

from __future__ import annotations

IMAGE_REF = "the attached image"

# Fig. 7, object recognition.
OBJECT_RECOGNITION = (
    "You are an expert in image recognition, adept at identifying all objects within an image. Please provide "
    "a comprehensive list of the objects present, using concise and precise descriptions. Ensure that each entry "
    "accurately reflects what is visible, and only identify objects you are certain about. Format your output as "
    "follows: [object1, object2, ...]."
)

# Fig. 7, relation extraction.
RELATION_EXTRACTION = (
    "You are an image relation extraction assistant. Given a list of instances: {objects}, please provide all "
    "relevant potential triples based on the image. Each instance must be selected from the list. The format for "
    "the triples is (instance1, relationship, instance2). Output the results as a list, such as "
    "[(instance1, relationship, instance2), ...]. Only the list should be provided; do not include any additional "
    "text."
)

_FIG10_HEAD = (
    "You are a QA pair generator assistant. I will provide you with an image: {image}, a list of objects "
    "(including the objects present in the image): {objects}, and a list of triples describing the relationships "
    "between the objects : {relations}. You may include additional objects and relationships that you are "
    "confident about. Please generate 5 optimal QA pairs that accurately reflect the image. "
)
_FIG10_TAIL = (
    "Output the QA pairs and corresponding answers in the format of a JSON list. Follow the output format as a "
    "JSON list, such as [QA1, QA2, ...]. Do not include any additional text."
)
FORMAT_QA = ' Each QA is a JSON object {{"question": "...", "answer": "..."}}.'

# Fig. 10, prompt 1: the highlighted object is in the question, the options are relations.
FINE_GRAINED_OBJECT_IN_QUESTION = (
    _FIG10_HEAD
    + 'Each question must include one object in the list highlighted with "<>", and the options should represent '
    "the relationships. " + _FIG10_TAIL + FORMAT_QA
)

# Fig. 10, prompt 2: the options are two highlighted objects.
FINE_GRAINED_OBJECTS_AS_OPTIONS = (
    _FIG10_HEAD
    + 'For each question, the options must consist of only two objects in the list, highlighted with "<>". '
    + _FIG10_TAIL
    + FORMAT_QA
)

# Fig. 11, multi-round grounding conversation.
GROUNDING_CONVERSATION = (
    "You are a QA pair generator assistant. I will provide you with an image: {image}, a list of potential object "
    "(including objects that may be present in the image): {objects} , a dictionary of bounding box coordinates "
    "(in the format [x1, y1, x2, y2], with floating numbers ranging from 0 to 1. These values correspond to the top "
    "left x, top left y, bottom right x, and bottom right y) for objects: {grounding}, and several sentences that "
    "describe the image: {annotation}\n"
    "Based on these materials, the task is to create at least 5 question-answer pairs related to the image based "
    "on the information by follow requirements blow:\n"
    '- (1) The object that has bounding box coordinates in the QA pairs should be highlighted with "<>" .\n'
    "- (2) You need include bounding box coordinates after the object that you are certain about in the "
    'description in the format "<object> [x1, y1, x2, y2]" instead of directly say the object name or describing '
    "the regions in text, ensuring they are as precise as possible.\n"
    "- (3) Avoid introducing objects that do not exist in the original descriptions and refrain from including "
    "excessive subjective perceptions to prevent creating illusions.\n"
    "- (4) The boxes provided in different sentences may have some coordinates that are the same or very close, "
    "which could be because different expressions refer to the same object. You should analyze and avoid "
    "describing a single object within a bounding box as multiple distinct entities\n"
    "- (5) The output should be a list of QA pairs, each of which includes question and answer, and should be "
    "limited to 50 words. Keep it as concise as possible." + FORMAT_QA
)

# Fig. 12, grounding description.
GROUNDING_DESCRIPTION = (
    "You are an image description annotation assistant. I will provide you with an image: {image}, a list of "
    "potential instances (including objects that may be present in the image): {objects}, a dictionary of "
    "bounding box coordinates (in the format [x1, y1, x2, y2], with floating numbers ranging from 0 to 1. These "
    "values correspond to the top left x, top left y, bottom right x, and bottom right y) for objects: "
    "{grounding}, a relationship triple list (in the format (instance1, relation, instance2)) among objects: "
    "{relations}, and original image description materials: {annotation}.\n"
    "- (1) You need include bounding box coordinates after the object that you are certain about in the "
    'description in the format "object [x1, y1, x2, y2]" instead of directly say the object name or describing '
    "the regions in text, ensuring they are as precise as possible.\n"
    "- (2) Avoid introducing objects that do not exist in the original descriptions and refrain from including "
    "excessive subjective perceptions to prevent creating illusions.\n"
    "- (3) Be aware that provided instances and their corresponding coordinates may be the same or very close, "
    "which could indicate that various expressions refer to the same object. Analyze these cases and avoid "
    "describing a single object within a bounding box as multiple distinct entities.\n"
    "- (4) Your output should consist solely of the improved image description, ensuring coherence, accurate, "
    "concise, and detailed. The image annotation should be limited to 150 words."
)

# Table 7, the LLM judge.
QA_JUDGE = (
    "You are tasked with evaluating QA pairs based on an image. Please assess the provided QA pairs according to "
    "the following criteria:\n"
    "****Quality (1-5):****\n"
    "1 - The QA is incoherent, lacks flow, and fails to convey the content of the image effectively.\n"
    "2 - The QA is somewhat relevant but contains notable inaccuracies or lacks clarity.\n"
    "3 - The QA is generally clear and relevant, though it may overlook some important details or context from "
    "the image.\n"
    "4 - The QA is clear, coherent, and accurately reflects the content of the image, with only minor omissions.\n"
    "5 - The QA is highly coherent and effectively captures the essence and details of the image, providing "
    "insightful and accurate information.\n"
    "Please evaluate the given QA pair on a scale from 1 to 5 and provide a brief justification for your rating, "
    "as well as determine whether the QA is correct.\n"
    'Your output should be structured as follows: "Quality": "Your rating here.", "Correct": "Yes or No", '
    '"Justification": "Your justification here.".\n'
    "Do not include any additional text outside of this format."
)
